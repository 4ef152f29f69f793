// A filesystem whose data lives on a block server reached over mutual TLS (certificates made with
// openssl at test time). `bslfs server add` refuses every server whose identity does not check out,
// in one line, recording nothing; while a workload reads and writes through the mount, the token
// changes over (server token list, `bslfs server set-token`, the old token dropped) and the server's
// certificate is renewed by SIGHUP; no call fails and every file reads back as written.
import t from 'tap'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as fsp from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { makeTestCerts } from './helpers/certs'
import { PYTHON, bslfs, childEnv, describeRun, freePort, repoRoot, run, sha256File, sleep, target, volumeKind, waitFor, withMount } from './helpers/mount'

// The test brings its own TLS block server, so one pass (the local one) is enough.
if (target === 'bslfs' && volumeKind === 'local') {
  t.test('mount over mutual TLS: server add refusals, token change-over and certificate reload under a workload', async t => {
    const m = await withMount(t, { noMount: true })
    const certs = makeTestCerts(await fsp.mkdtemp(join(m.base, 'certs-')))
    const dir = join(m.base, 'tls-server')
    await fsp.mkdir(dir)
    const oldToken = randomBytes(24).toString('hex')
    const newToken = randomBytes(24).toString('hex')
    const serverTokens = join(dir, 'tokens')
    await fsp.writeFile(serverTokens, oldToken + '\n', { mode: 0o600 })
    const clientOld = join(dir, 'client-old-token')
    const clientNew = join(dir, 'client-new-token')
    await fsp.writeFile(clientOld, oldToken + '\n', { mode: 0o600 })
    await fsp.writeFile(clientNew, newToken + '\n', { mode: 0o600 })
    const cert = join(dir, 'cert.pem')
    const key = join(dir, 'key.pem')
    await fsp.copyFile(certs.server.cert, cert)
    await fsp.copyFile(certs.server.key, key)
    await fsp.chmod(key, 0o600)

    const port = await freePort()
    const child = spawn(process.execPath, [join(repoRoot, 'dist', 'server', 'main.js'), '--listen', `127.0.0.1:${port}`,
      '--device', `d1=${join(dir, 'd1')}`, '--token-file', serverTokens, '--name', 's1',
      '--tls-cert', cert, '--tls-key', key, '--client-ca', certs.ca], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv })
    let log = ''
    child.stdout.on('data', c => { log += c })
    child.stderr.on('data', c => { log += c })
    t.teardown(() => { child.kill('SIGKILL') })
    t.ok(await waitFor(() => log.includes('listening on'), 15_000), 'the server started', { log })
    const url = `https://127.0.0.1:${port}`
    const tlsArgs = ['--ca', certs.ca, '--client-cert', certs.client.cert, '--client-key', certs.client.key]

    // Refusals: one line each, naming the server, and nothing recorded.
    const refusals: Array<[string, string[], RegExp]> = [
      ['plain http to a TLS server', ['server', 'add', m.state, 'bad', `http://127.0.0.1:${port}`, '--token-file', clientOld], /server bad at http:\/\/127\.0\.0\.1:\d+: the server speaks TLS: use https:\/\//],
      ['an unknown CA', ['server', 'add', m.state, 'bad', url, '--token-file', clientOld, '--ca', certs.otherCa,
        '--client-cert', certs.client.cert, '--client-key', certs.client.key], /server bad at https:\/\/127\.0\.0\.1:\d+: the server's certificate is not signed by a trusted CA/],
      ['no client certificate', ['server', 'add', m.state, 'bad', url, '--token-file', clientOld, '--ca', certs.ca], /server bad at https:\/\/127\.0\.0\.1:\d+ refused this host's client certificate: no client certificate/],
      ['a key file others can read', ['server', 'add', m.state, 'bad', url, '--token-file', clientOld, '--ca', certs.ca,
        '--client-cert', certs.client.cert, '--client-key', await (async () => {
          const loose = join(dir, 'loose.key')
          await fsp.copyFile(certs.client.key, loose)
          await fsp.chmod(loose, 0o644)
          return loose
        })()], /client key file .* is accessible by group or others/]
    ]
    for (const [name, args, message] of refusals) {
      const r = await bslfs(args)
      t.not(r.code, 0, `${name}: refused`)
      t.match(r.stderr, message, `${name}: ${r.stderr.trim()}`)
      t.equal(r.stderr.trim().split('\n').length, 1, `${name}: one line`)
    }
    const none = await bslfs(['server', 'list', m.state])
    t.match(none.stdout, /\(no servers\)/, 'nothing was recorded')

    for (const args of [['server', 'add', m.state, 's1', url, '--token-file', clientOld, ...tlsArgs],
      ['volume', 'add', m.state, '9', 's1:d1'], ['volume', 'default', m.state, '9']]) {
      const r = await bslfs(args)
      t.equal(r.code, 0, `bslfs ${args.slice(0, 2).join(' ')}`, { run: describeRun(r) })
    }
    await m.mount()

    const workload = run(PYTHON, ['-c', `
import os, sys, time, hashlib, random, json
d, secs = sys.argv[1], float(sys.argv[2])
good, errors = {}, []
i = 0
end = time.time() + secs
while time.time() < end:
    i += 1
    p = os.path.join(d, 'f%d' % i)
    data = os.urandom(random.randint(1, 600_000))
    try:
        with open(p, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        good[p] = hashlib.sha256(data).hexdigest()
        q = random.choice(list(good))
        with open(q, 'rb') as f:
            if hashlib.sha256(f.read()).hexdigest() != good[q]:
                errors.append('wrong bytes in ' + q)
    except OSError as e:
        errors.append(str(e))
json.dump({'good': good, 'errors': errors}, sys.stdout)
`, m.mnt, '10'], { timeout: 120_000 })

    await sleep(2000)
    // The change-over: the server takes both tokens, the mount moves to the new one, the old is dropped.
    await fsp.writeFile(serverTokens, `${oldToken}\n${newToken}\n`)
    child.kill('SIGHUP')
    t.ok(await waitFor(() => /SIGHUP: 2 token\(s\)/.test(log), 5000), 'the server accepts both tokens')
    const set = await bslfs(['server', 'set-token', m.state, 's1', '--token-file', clientNew])
    t.equal(set.code, 0, 'server set-token on the running mount', { run: describeRun(set) })
    t.match(set.stdout, /now uses the token in .*client-new-token \(1 open device\(s\) switched\)/)
    await sleep(1000)
    await fsp.writeFile(serverTokens, `${newToken}\n`)
    // And a renewed certificate, picked up by the same SIGHUP.
    await fsp.copyFile(certs.server.cert, cert)
    child.kill('SIGHUP')
    t.ok(await waitFor(() => /SIGHUP: 1 token\(s\)/.test(log), 5000), 'the old token is dropped')
    t.ok(await waitFor(() => (log.match(/new connections use the certificate/g) ?? []).length >= 2, 5000), 'the certificate is reloaded')

    const r = await workload
    t.equal(r.code, 0, 'workload ran', { run: describeRun(r) })
    const res = JSON.parse(r.stdout) as { good: Record<string, string>, errors: string[] }
    t.same(res.errors, [], 'no call failed and no read was wrong during the change-over')
    t.ok(Object.keys(res.good).length > 5, `files written (${Object.keys(res.good).length})`)
    for (const [p, digest] of Object.entries(res.good)) {
      if (await sha256File(p) !== digest) t.fail(`${p} reads back differently`)
    }
    await m.remount()
    let same = 0
    for (const [p, digest] of Object.entries(res.good)) if (await sha256File(p) === digest) same++
    t.equal(same, Object.keys(res.good).length, 'after a remount (new token from the server row) every file reads back (sha256)')

    // Nothing secret in what bslfs prints.
    const outputs = [await bslfs(['status', m.state]), await bslfs(['server', 'list', m.state]), await bslfs(['server', 'list', m.state, '--json'])]
    const daemonLog = fs.existsSync(join(m.state, 'daemon.log')) ? await fsp.readFile(join(m.state, 'daemon.log'), 'utf8') : ''
    const text = outputs.map(o => o.stdout + o.stderr).join('\n') + daemonLog + log
    for (const [name, secret] of [['old token', oldToken], ['new token', newToken],
      ['client key', (await fsp.readFile(certs.client.key, 'utf8')).split('\n')[1]],
      ['server key', (await fsp.readFile(certs.server.key, 'utf8')).split('\n')[1]]] as const) {
      t.notOk(text.includes(secret), `the ${name} is not printed by status, server list, the daemon's log or the server's`)
    }
    t.match(outputs[1].stdout, /s1 {2}https:\/\/127\.0\.0\.1:\d+ {2}token .*client-new-token {2}ca .*ca\.crt {2}client cert/)
  })
}
