// Real programs on the mount: git (init, add, commit, fsck, status, log,
// gc, local clone with hard links) and sqlite3 (rollback journal and WAL).
import t from 'tap'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { childEnv, describeRun, run, withMount, type RunResult } from './helpers/mount'

const gitEnv: NodeJS.ProcessEnv = { ...childEnv, GIT_CONFIG_GLOBAL: '/dev/null', HOME: '/nonexistent' }

t.test('git', async (t) => {
  const m = await withMount(t)
  const repo = join(m.mnt, 'repo')
  await mkdir(repo)
  const git = (args: string[], cwd = repo): Promise<RunResult> =>
    run('git', ['-c', 'init.defaultBranch=main', '-c', 'gc.auto=0', '-c', 'core.fsync=all', ...args], { cwd, env: gitEnv, timeout: 180_000 })
  const ok = async (args: string[], what?: string, cwd = repo) => {
    const r = await git(args, cwd)
    t.equal(r.code, 0, what ?? `git ${args.join(' ')}`, { run: describeRun(r) })
    return r
  }

  await ok(['init'])
  // 300 files in 15 directories: text of varied sizes and a few binary blobs
  const N = 300
  for (let i = 0; i < N; i++) {
    const dir = join(repo, `dir${i % 15}`, `sub${i % 4}`)
    await mkdir(dir, { recursive: true })
    const body = i % 50 === 0
      ? Buffer.from(Array.from({ length: 200_000 }, (_, k) => (k * 31 + i) & 0xff))
      : Buffer.from(`file ${i}\n`.repeat(1 + (i * 37) % 400))
    await writeFile(join(dir, `f${i}.txt`), body)
  }
  await ok(['add', '-A'])
  await ok(['commit', '-q', '-m', 'first'])
  const ls = await ok(['ls-files'])
  t.equal(ls.stdout.split('\n').filter(Boolean).length, N, `${N} files committed`)
  const fsck = await ok(['fsck', '--full', '--strict'], 'git fsck --full after first commit')
  t.notMatch(fsck.stdout + fsck.stderr, /error|missing|corrupt|broken/i, 'fsck reports no problems')
  const st = await ok(['status', '--porcelain'])
  t.equal(st.stdout, '', 'git status clean after first commit')

  // edits, deletions, a rename and new files
  for (let i = 0; i < N; i += 7) {
    const p = join(repo, `dir${i % 15}`, `sub${i % 4}`, `f${i}.txt`)
    await writeFile(p, (await readFile(p)).toString('latin1') + 'edited\n', 'latin1')
  }
  await rm(join(repo, 'dir1', 'sub1', 'f1.txt'))
  await rename(join(repo, 'dir2', 'sub2', 'f2.txt'), join(repo, 'dir2', 'renamed.txt'))
  await mkdir(join(repo, 'new'))
  for (let i = 0; i < 20; i++) await writeFile(join(repo, 'new', `n${i}`), `new ${i}\n`)
  const dirty = await ok(['status', '--porcelain'])
  t.ok(dirty.stdout.split('\n').filter(Boolean).length > 40, 'git status sees the edits')
  await ok(['add', '-A'])
  await ok(['commit', '-q', '-m', 'second'])
  const log = await ok(['log', '--oneline'])
  t.equal(log.stdout.split('\n').filter(Boolean).length, 2, 'git log shows 2 commits')
  t.equal((await ok(['status', '--porcelain'])).stdout, '', 'git status clean after second commit')
  // 43 edited + 1 deleted + 1 renamed + 20 new
  const diff = await ok(['diff', '--stat', '-M', 'HEAD~1', 'HEAD'])
  t.match(diff.stdout, / 65 files changed/, 'second commit changes the expected files', { stat: diff.stdout.split('\n').slice(-2) })

  // packing (creates, renames and deletes many files) and a local clone (hard links objects)
  await ok(['gc', '--quiet', '--prune=now'], 'git gc')
  await ok(['fsck', '--full', '--strict'], 'git fsck after gc')
  await ok(['clone', '--quiet', '--local', repo, join(m.mnt, 'clone')], 'git clone --local (hard links)', m.mnt)
  await ok(['fsck', '--full'], 'fsck of the clone', join(m.mnt, 'clone'))
  const head = (await ok(['rev-parse', 'HEAD'])).stdout
  t.equal((await ok(['rev-parse', 'HEAD'], 'rev-parse in clone', join(m.mnt, 'clone'))).stdout, head, 'clone has the same HEAD')

  await m.remount()
  await ok(['fsck', '--full', '--strict'], 'git fsck after remount')
  t.equal((await ok(['status', '--porcelain'])).stdout, '', 'git status clean after remount')
  t.equal((await ok(['log', '--oneline'])).stdout.split('\n').filter(Boolean).length, 2, '2 commits after remount')
  t.equal((await ok(['status', '--porcelain'], 'status in clone', join(m.mnt, 'clone'))).stdout, '', 'clone status clean after remount')
})

function insertSql (from: number, to: number): string {
  const lines = ['BEGIN;']
  for (let i = from; i < to; i++) lines.push(`INSERT INTO t(id, v) VALUES (${i}, '${'v' + i + '-'.repeat(i % 97)}');`)
  lines.push('COMMIT;')
  return lines.join('\n') + '\n'
}

// expected sum(length(v)) for ids 1..10000
let expectedLen = 0
for (let i = 1; i <= 10_000; i++) expectedLen += ('v' + i).length + (i % 97)

for (const mode of ['delete', 'wal'] as const) {
  t.test(`sqlite3 (journal_mode=${mode})`, async (t) => {
    const m = await withMount(t)
    const db = join(m.mnt, `test-${mode}.db`)
    const sql = async (input: string, what: string) => {
      const r = await run('sqlite3', ['-bail', db], { input, timeout: 180_000 })
      t.equal(r.code, 0, what, { run: describeRun(r) })
      t.equal(r.stderr, '', `${what}: no stderr`)
      return r.stdout.trim()
    }
    const jm = await sql(`PRAGMA journal_mode=${mode};\nCREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);\nCREATE INDEX tv ON t(v);\n`, 'create table')
    t.equal(jm, mode, `journal_mode is ${mode}`)
    // 10,000 rows in 4 transactions, from 4 separate sqlite3 processes
    for (let k = 0; k < 4; k++) await sql(insertSql(1 + k * 2500, 1 + (k + 1) * 2500), `transaction ${k + 1} of 4 (2,500 rows)`)
    const check = async (when: string) => {
      t.equal(await sql('PRAGMA integrity_check;\n', `integrity_check ${when}`), 'ok', `integrity_check = ok ${when}`)
      t.equal(await sql('SELECT count(*), sum(id), sum(length(v)) FROM t;\n', `count ${when}`),
        `10000|50005000|${expectedLen}`, `10,000 rows with the right content ${when}`)
    }
    await check('after inserts')
    // an update and delete touching pages all over the file, then vacuum (rewrites the whole db)
    await sql("BEGIN; UPDATE t SET v = v || 'x' WHERE id % 3 = 0; DELETE FROM t WHERE id > 10000; COMMIT;\n", 'update')
    await sql("UPDATE t SET v = substr(v, 1, length(v) - 1) WHERE id % 3 = 0;\n", 'undo update')
    await sql('VACUUM;\n', 'vacuum')
    await check('after vacuum')
    await m.remount()
    await check('after remount')
  })
}
