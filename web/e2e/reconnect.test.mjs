// A TCP proxy between browser and server cuts every connection at random 50+ times while a
// pod logs 1,000 lines/s, and while the pods of an app log a few hundred lines/s together:
// the page must end up with every sequence number of every pod exactly once, with no manual
// action (native EventSource reconnect + the stream-credential cookie).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { allowWebOrigins, appendLines, apply, browser, ensurePodLogs, kubectl, podManifest, signIn, startKubelens, startProxy, testenv, waitFor } from './harness.mjs';

let env, server, chrome, proxy;
const cleanups = [];

before(async () => {
  env = testenv();
  server = await startKubelens(env);
  proxy = await startProxy(server.port);
  await allowWebOrigins(env, [`http://127.0.0.1:${proxy.port}`]);
  chrome = await browser();
});

after(async () => {
  for (const c of cleanups) await c().catch(() => undefined);
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
  // The last cut (or token end) may have landed after the last line: the view must get back
  // to live by itself, which can take a reconnect.
  await waitFor('the view live again', async () => (await page.$eval('#stream-state', (e) => e.className)) === 'state live', 30_000);
  console.log(`${cuts} cuts, ${written} lines, all exactly once`);
  await ctx.close();
});

test('50+ random connection cuts during an app stream: every line of every pod on screen exactly once', async () => {
  const started = Date.now();
  const base = `http://127.0.0.1:${proxy.port}`;
  const ns = 'team-a';
  const id = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
  const rs = `cutapp-${id}`;
  const pods = [0, 1, 2].map((i) => `${rs}-p${i}`);
  const ratePerPod = 100; // 300 lines/s in all
  cleanups.push(() => kubectl(env, ['-n', ns, 'delete', 'replicaset', rs, '--ignore-not-found', '--wait=false']));
  for (const pod of pods) {
    cleanups.push(() => kubectl(env, ['-n', ns, 'delete', 'pod', pod, '--ignore-not-found', '--grace-period=0', '--force', '--wait=false']));
    cleanups.push(() => kubectl(env, ['-n', ns, 'delete', 'logs.kwok.x-k8s.io', pod, '--ignore-not-found', '--wait=false']));
  }

  // A bare ReplicaSet (its own app) with three pods, each with its own log file.
  const labels = { app: rs };
  await apply(env, { apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name: rs, namespace: ns, labels },
    spec: { replicas: 3, selector: { matchLabels: labels }, template: { metadata: { labels }, spec: { containers: [{ name: 'app', image: 'registry.invalid/kubelens/e2e:1' }] } } } });
  const uid = (await kubectl(env, ['-n', ns, 'get', 'replicaset', rs, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const files = {};
  for (const pod of pods) {
    [files[pod]] = await ensurePodLogs(env, ns, pod, ['app']);
    await apply(env, podManifest(env, ns, pod, { labels, owner: { apiVersion: 'apps/v1', kind: 'ReplicaSet', name: rs, uid } }));
  }

  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await signIn(page, base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  await page.waitForSelector('#user:text("viewer")');
  await page.goto(`${base}/#/ns/${ns}`);
  await page.waitForSelector(`#apps a:text("${rs}")`, { timeout: 30_000 });
  await page.goto(`${base}/#/ns/${ns}/app/${rs}?kind=ReplicaSet&tailLines=0`);
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
  // Every pod's source is open once a line written now reaches the page (tailLines=0 shows
  // only new lines): probe each file until its probe is on screen.
  const kept = () => page.evaluate(() => window.kubelensLines());
  await waitFor('every pod streaming', async () => {
    const text = (await kept()).lines.join('\n');
    const waiting = pods.filter((p) => !text.includes(`probe ${p}`));
    for (const p of waiting) appendLines(files[p], [`probe ${p}`]);
    return waiting.length === 0;
  }, 60_000);

  const src = (pod) => `${pod}-cut`;
  const gens = pods.map((pod) => spawn(env.TESTENV_LOGGEN, ['--file', files[pod], '--count', '0', '--rate', String(ratePerPod), '--src', src(pod), '--quiet'], { stdio: 'ignore' }));
  const exited = gens.map((g) => new Promise((r) => g.once('exit', r)));
  let cuts = 0, lastCut = 0, stopped = 0;
  try {
    const t0 = Date.now();
    while (cuts < 50) {
      assert.ok(Date.now() - t0 < 240_000, `only ${cuts} cuts in 240 s`);
      // Once the (re)connected stream carries data, cut at a random moment 0-400 ms later:
      // sometimes during the resumed backlog, sometimes in the live tail.
      await waitFor('the stream carrying data again', () => proxy.carrying(), 30_000).catch(async (e) => {
        throw new Error(`${e.message} after ${cuts} cuts; page state: ${await page.textContent('#stream-state')}; server log: ${server.logFile}`);
      });
      await new Promise((r) => setTimeout(r, Math.random() * 400));
      const n = proxy.cut();
      if (n) { cuts += n; lastCut = Date.now(); }
    }
  } finally {
    for (const g of gens) g.kill('SIGTERM');
    stopped = Date.now();
  }
  await Promise.all(exited);
  const fs = await import('node:fs');
  const written = Object.fromEntries(pods.map((pod) => [pod, fs.readFileSync(files[pod], 'utf8').split('\n').filter((l) => l.includes(`src=${src(pod)}`)).length]));
  for (const pod of pods) assert.ok(written[pod] > 1000, `loggen wrote ${written[pod]} lines for ${pod}`);
  const total = pods.reduce((n, p) => n + written[p], 0);
  const perPod = (view) => Object.fromEntries(pods.map((pod) => [pod, view.lines.filter((l) => l.includes(`src=${src(pod)}`)).map((l) => Number(/seq=(\d+)/.exec(l)[1]))]));
  // Wait until the page has them all, or has received nothing new for 30 s (then the
  // assertions below name the first missing or repeated line).
  let last = -1, still = Date.now();
  const view = await waitFor('the page to receive every line or stop receiving', async () => {
    const v = await kept();
    const seqs = perPod(v);
    const n = pods.reduce((a, p) => a + seqs[p].length, 0);
    if (n !== last) { last = n; still = Date.now(); }
    return n >= total || Date.now() - still > 30_000 ? { dropped: v.dropped, seqs } : null;
  }, 90_000);
  const caughtUp = (Date.now() - stopped) / 1000;
  assert.equal(view.dropped, 0, 'nothing dropped from the front (under the 100,000-line cap)');
  for (const pod of pods) {
    const seqs = view.seqs[pod];
    const wrong = seqs.findIndex((s, i) => s !== i + 1);
    assert.equal(wrong, -1, `${pod}: seq ${wrong + 1} expected at position ${wrong}, found ${seqs[wrong]} (of ${seqs.length} on the page, ${written[pod]} written)`);
    assert.equal(seqs.length, written[pod], `${pod}: every line exactly once (waited ${caughtUp.toFixed(1)} s after the writers stopped)`);
  }
  // The last cut (or token end) may have landed after the last line: the view must get back
  // to live by itself, which can take a reconnect.
  await waitFor('the view live again', async () => (await page.$eval('#stream-state', (e) => e.className)) === 'state live', 30_000);
  // The merged view on screen labels each line with its pod, one colour per pod.
  const shown = await page.$$eval('#log .line .pod', (ps) => [...new Set(ps.map((p) => `${p.textContent} ${p.className}`))]);
  const names = new Set(shown.map((s) => s.split(' ')[0]));
  assert.ok(names.size >= 2 && [...names].every((n) => pods.includes(n)), `pods on screen: ${shown}`);
  assert.equal(new Set(shown.map((s) => s.split(' ').slice(1).join(' '))).size, names.size, `one colour per pod: ${shown}`);
  console.log(`app: ${cuts} cuts, ${total} lines (${pods.map((p) => written[p]).join(' + ')}), all exactly once, on the page ${caughtUp.toFixed(1)} s after the writers stopped (last cut ${((stopped - lastCut) / 1000).toFixed(1)} s before), ${((Date.now() - started) / 1000).toFixed(1)} s in all`);
  await ctx.close();
});
