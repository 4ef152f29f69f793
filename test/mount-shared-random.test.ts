// Random operations from two mounts of one filesystem on PostgreSQL ("hosts" A and B, each its own
// daemon and caches), at once: first each in a subtree of its own, checked against that host's own
// model through both mounts; then both in one directory, creates, renames, unlinks, mkdirs and rmdirs
// racing, after which both hosts see the same tree, every file is whole, and fsck is clean.
// Runs once, in the mount suite's first pass.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { describeRun, digestDiff, py, treeDigest, waitFor } from './helpers/mount'
import { ENTRY_TIMEOUT_MS, sharedSkip as skip, twoMounts } from './helpers/shared-mounts'

const OPS = Number(process.env.BSLFS_SHARED_RANDOM_OPS ?? 400)

/**
 * argv: root, host tag, seed, ops. Random operations under root against a model of it; prints the
 * model (path → sha256 of the content, or "dir") as one JSON line "model {...}", and the count of
 * each operation.
 */
const OWN_SUBTREE = `
import hashlib, json, os, random, sys
root, host, seed, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
model = {'': 'dir'}
os.mkdir(root)
counts = {}
def dirs(): return [p for p, v in model.items() if v == 'dir']
def files(): return [p for p, v in model.items() if v != 'dir']
def full(p): return os.path.join(root, p) if p else root
def data():
    return r.randbytes(r.choice([0, 1, 513, 4096, 65536, 200000, 1048577]))
for i in range(ops):
    op = r.choice(['create', 'create', 'write', 'append', 'truncate', 'rename', 'unlink', 'mkdir', 'rmdir'])
    counts[op] = counts.get(op, 0) + 1
    if op == 'create' or (op in ('write', 'append', 'truncate', 'unlink') and not files()):
        p = os.path.join(r.choice(dirs()), '%s-f%d' % (host, i)).lstrip('/')
        b = data()
        with open(full(p), 'wb') as f: f.write(b)
        model[p] = b
    elif op == 'write':
        p = r.choice(files())
        old = model[p]
        at = r.randrange(0, len(old) + 1)
        b = data()[:70000]
        with open(full(p), 'r+b') as f:
            f.seek(at); f.write(b)
        model[p] = old[:at] + b + old[at + len(b):]
    elif op == 'append':
        p = r.choice(files())
        b = data()[:5000]
        with open(full(p), 'ab') as f: f.write(b)
        model[p] = model[p] + b
    elif op == 'truncate':
        p = r.choice(files())
        n = r.randrange(0, len(model[p]) + 70000)
        os.truncate(full(p), n)
        model[p] = model[p][:n] + bytes(max(0, n - len(model[p])))
    elif op == 'rename':
        src = r.choice(files())
        dst = os.path.join(r.choice(dirs()), '%s-r%d' % (host, i)).lstrip('/')
        os.rename(full(src), full(dst))
        model[dst] = model.pop(src)
    elif op == 'unlink':
        p = r.choice(files())
        os.unlink(full(p))
        del model[p]
    elif op == 'mkdir':
        p = os.path.join(r.choice(dirs()), '%s-d%d' % (host, i)).lstrip('/')
        os.mkdir(full(p))
        model[p] = 'dir'
    elif op == 'rmdir':
        empty = [d for d in dirs() if d and not any(q.startswith(d + '/') for q in model)]
        if empty:
            d = r.choice(empty)
            os.rmdir(full(d))
            del model[d]
J = dict(separators=(',', ':'))
print('model', json.dumps({p: ('dir' if v == 'dir' else hashlib.sha256(v).hexdigest()) for p, v in model.items() if p}, **J))
print('counts', json.dumps(counts, **J))
`

/**
 * argv: shared dir, host tag, seed, ops. Both hosts at once in one directory: files are written whole
 * under a name of this host's own and renamed into place (so each holds one writer's bytes, which
 * say who wrote them), then renamed, unlinked, moved into subdirectories; subdirectories made and
 * removed. Races give ENOENT, EEXIST, ENOTEMPTY: counted, never an error.
 */
const SHARED_DIR = `
import errno, json, os, random, sys
root, host, seed, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
counts, races = {}, {}
names = ['n%d' % k for k in range(12)]
subdirs = ['d%d' % k for k in range(4)]
def content(tag, n):
    unit = ('%s;' % tag).encode()
    return (unit * (n // len(unit) + 1))[:n]
for i in range(ops):
    op = r.choice(['publish', 'publish', 'rename', 'unlink', 'mkdir', 'rmdir', 'into'])
    counts[op] = counts.get(op, 0) + 1
    try:
        if op == 'publish':
            tmp = os.path.join(root, '.tmp-%s-%d' % (host, i))
            tag = '%s-%d' % (host, i)
            with open(tmp, 'wb') as f: f.write(content(tag, r.choice([0, 64, 4096, 100000])))
            os.rename(tmp, os.path.join(root, r.choice(names)))
        elif op == 'rename':
            os.rename(os.path.join(root, r.choice(names)), os.path.join(root, r.choice(names)))
        elif op == 'unlink':
            os.unlink(os.path.join(root, r.choice(names)))
        elif op == 'mkdir':
            os.mkdir(os.path.join(root, r.choice(subdirs)))
        elif op == 'rmdir':
            os.rmdir(os.path.join(root, r.choice(subdirs)))
        elif op == 'into':
            os.rename(os.path.join(root, r.choice(names)), os.path.join(root, r.choice(subdirs), r.choice(names)))
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
            print('error', op, i, errno.errorcode.get(e.errno, e.errno), e)
            sys.exit(1)
        k = '%s:%s' % (op, errno.errorcode[e.errno])
        races[k] = races.get(k, 0) + 1
J = dict(separators=(',', ':'))
print('counts', json.dumps(counts, **J))
print('races', json.dumps(races, **J))
`

/** Every regular file under `dir` holds the bytes of one publish: "tag;" repeated, cut to its length (64 bytes or more: the tag shows). */
function wholeFiles (dir: string): { files: number, broken: string[] } {
  let files = 0
  const broken: string[] = []
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name)
      if (e.isDirectory()) { walk(p); continue }
      files++
      const b = fs.readFileSync(p)
      if (b.length === 0) continue
      const unit = b.subarray(0, b.indexOf(';') + 1)
      const ok = unit.length > 1 && b.every((x, i) => x === unit[i % unit.length])
      if (!ok) broken.push(`${p.slice(d.length)} (${b.length} bytes, starts ${JSON.stringify(b.subarray(0, 24).toString('latin1'))})`)
    }
  }
  walk(dir)
  return { files, broken }
}

t.test('random operations from two mounts of one URL at once', { skip }, async t => {
  const s = await twoMounts(t)

  t.test('each host in a subtree of its own: both subtrees as each host\'s model says, seen through both mounts', async t => {
    const [ra, rb] = await Promise.all([
      py(OWN_SUBTREE, [join(s.a, 'own-a'), 'a', '11', String(OPS)]),
      py(OWN_SUBTREE, [join(s.b, 'own-b'), 'b', '12', String(OPS)])
    ])
    if (!t.equal(ra.run.code, 0, 'A ran its operations', { run: describeRun(ra.run) })) return
    if (!t.equal(rb.run.code, 0, 'B ran its operations', { run: describeRun(rb.run) })) return
    t.comment(`A: ${ra.results.counts}; B: ${rb.results.counts}`)
    for (const [name, r] of [['own-a', ra], ['own-b', rb]] as const) {
      const model = JSON.parse(r.results.model!) as Record<string, string>
      for (const [host, mnt] of [['A', s.a], ['B', s.b]] as const) {
        const seen = async (): Promise<string[]> => {
          const got: Record<string, string> = {}
          for (const e of await treeDigest(join(mnt, name))) got[e.path] = e.type === 'dir' ? 'dir' : e.sha256 ?? e.type
          const diff: string[] = []
          for (const k of new Set([...Object.keys(model), ...Object.keys(got)])) {
            if (model[k] !== got[k]) diff.push(`${k}: model ${model[k] ?? 'absent'}, ${host} ${got[k] ?? 'absent'}`)
          }
          return diff.slice(0, 10)
        }
        let diff: string[] = []
        // The writer's own mount at once; the other within its entry timeout at most (told at once where it cached).
        await waitFor(async () => (diff = await seen()).length === 0, ENTRY_TIMEOUT_MS + 3000, 100)
        t.same(diff, [], `${name} through ${host} is as its writer's model says (${Object.keys(model).length} names)`)
      }
    }
  })

  t.test('both hosts in one directory, creates, renames, unlinks and rmdirs racing: the same tree on both, every file whole, fsck clean', async t => {
    fs.mkdirSync(join(s.a, 'together'))
    await waitFor(() => fs.existsSync(join(s.b, 'together')), ENTRY_TIMEOUT_MS + 2000, 20)
    const [ra, rb] = await Promise.all([
      py(SHARED_DIR, [join(s.a, 'together'), 'a', '21', String(OPS)]),
      py(SHARED_DIR, [join(s.b, 'together'), 'b', '22', String(OPS)])
    ])
    if (!t.equal(ra.run.code, 0, 'A ran its operations (races only)', { run: describeRun(ra.run) })) return
    if (!t.equal(rb.run.code, 0, 'B ran its operations (races only)', { run: describeRun(rb.run) })) return
    t.comment(`races: A ${ra.results.races}; B ${rb.results.races}`)
    let diff: string[] = []
    await waitFor(async () => (diff = digestDiff(await treeDigest(join(s.a, 'together')), await treeDigest(join(s.b, 'together')))).length === 0,
      ENTRY_TIMEOUT_MS + 3000, 100)
    t.same(diff, [], 'A and B see the same tree')
    for (const [host, mnt] of [['A', s.a], ['B', s.b]] as const) {
      const { files, broken } = wholeFiles(join(mnt, 'together'))
      t.ok(files > 0, `${host}: some files are left to check (${files})`)
      t.same(broken, [], `every one of the ${files} files seen through ${host} holds one writer's bytes, whole`)
    }
    // Once the mounts are quiet: while the lease holder's reclaimer deletes the replaced files' objects, an
    // fsck that listed an object before its deletion and read the queue after it counts it as an orphan.
    let r = await s.cli(['fsck', s.url, '--json'])
    for (let i = 0; i < 20 && r.code !== 0; i++) {
      await new Promise(resolve => setTimeout(resolve, 500))
      r = await s.cli(['fsck', s.url, '--json'])
    }
    t.equal(r.code, 0, 'fsck of the URL is clean with both still mounted, once they are quiet', { run: describeRun(r) })
    const report = JSON.parse(r.stdout) as { problems: Record<string, number> }
    t.same(report.problems, {}, 'no problem of any kind (entries, link counts, inode numbers, blocks, objects)')
  })
})
