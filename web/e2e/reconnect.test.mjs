// A TCP proxy between browser and server cuts every connection at random 50+ times while a
// pod logs 1,000 lines/s: the page must end up with every sequence number exactly once,
// with no manual action (native EventSource reconnect + the stream-credential cookie).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { allowWebOrigins, browser, signIn, startKubelens, testenv, waitFor } from './harness.mjs';

let env, server, chrome, proxy;

/** Forwards 127.0.0.1:<port> to `target`; `cut()` destroys every open connection. */
function startProxy(targetPort) {
  const sockets = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream, bytes: 0 };
    sockets.add(pair);
    upstream.on('data', (d) => { pair.bytes += d.length; });
    client.pipe(upstream).pipe(client);
    const drop = () => { sockets.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve({
    port: srv.address().port,
    /** Cuts every connection that carried data; returns how many it cut. */
    cut() {
      let n = 0;
      for (const p of sockets) if (p.bytes > 0) { n++; p.client.destroy(); p.upstream.destroy(); sockets.delete(p); }
      return n;
    },
    close: () => { for (const p of sockets) { p.client.destroy(); p.upstream.destroy(); } srv.close(); },
  })));
}

before(async () => {
  env = testenv();
  server = await startKubelens(env);
  proxy = await startProxy(server.port);
  await allowWebOrigins(env, [`http://127.0.0.1:${proxy.port}`]);
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  proxy?.close();
  server?.stop();
});

test('50+ random connection cuts during a fast stream: every line on screen exactly once', async () => {
  const base = `http://127.0.0.1:${proxy.port}`;
  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await signIn(page, base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  await page.waitForSelector('#user:text("viewer")');
  await page.goto(`${base}/#/ns/team-a/pod/debug?tailLines=0`);
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });

  const src = `cut-${Date.now()}`;
  const rate = 1000;
  const gen = spawn(env.TESTENV_LOGGEN, ['--file', path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log'), '--count', '0', '--rate', String(rate), '--src', src, '--quiet'], { stdio: 'ignore' });
  let cuts = 0;
  try {
    const started = Date.now();
    while (cuts < 50) {
      assert.ok(Date.now() - started < 240_000, `only ${cuts} cuts in 240 s`);
      // Wait until the reconnected stream carries data again, then cut at a random moment.
      await new Promise((r) => setTimeout(r, 150 + Math.random() * 600));
      cuts += proxy.cut();
    }
  } finally {
    gen.kill('SIGTERM');
  }
  await new Promise((r) => gen.once('exit', r));
  // The last line loggen wrote: read back from the file.
  const fs = await import('node:fs');
  const written = fs.readFileSync(path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log'), 'utf8')
    .split('\n').filter((l) => l.includes(`src=${src}`)).length;
  assert.ok(written > 10_000, `loggen wrote ${written}`);
  // tailLines=0: every kept line is ours, and lines beyond the page's 100,000 cap are dropped
  // from the front (counted), so the kept ones must be exactly dropped+1 .. written.
  const { dropped, seqs } = await waitFor('every line on screen', async () => {
    const view = await page.evaluate(() => window.kubelensLines());
    const mine = view.lines.filter((l) => l.includes(`src=${src}`)).map((l) => Number(/seq=(\d+)/.exec(l)[1]));
    return mine.length + view.dropped >= written ? { dropped: view.dropped, seqs: mine } : null;
  }, 60_000);
  assert.equal(seqs.length + dropped, written, 'no duplicate, no gap');
  seqs.forEach((s, i) => assert.equal(s, dropped + i + 1, `seq ${dropped + i + 1} at position ${i}`));
  assert.equal(await page.$eval('#stream-state', (e) => e.className), 'state live');
  console.log(`${cuts} cuts, ${written} lines, all exactly once`);
  await ctx.close();
});
