// A terminated pod's logs in a real browser: a Job's pod writes a known set of numbered
// lines and completes while kubelens runs (the retention recorder captures it), is deleted,
// moves from the pods list to the archived list (with its expiry), and its log view shows
// every line from the archive, once, with the expiry.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { allowWebOrigins, apply, browser, ensurePodLogs, kubectl, passwordToken, podManifest, shots, signIn, startKubelens, testenv, waitFor } from './harness.mjs';

let env, server, chrome;
const TTL_MIN = 10;
const NS = 'team-a';
const cleanups = [];

before(async () => {
  env = testenv();
  server = await startKubelens(env, `logs:\n  terminated_log_ttl: ${TTL_MIN}m\n`);
  await allowWebOrigins(env, [server.base]);
  chrome = await browser();
});

after(async () => {
  for (const c of cleanups) await c().catch(() => undefined);
  await chrome?.close();
  server?.stop();
});

/** The API's archived-pods list for team-a (read with viewer's own token, not the page's). */
async function archivedPods() {
  const res = await fetch(`${server.base}/api/v1/namespaces/${NS}/archived-pods`, { headers: { Authorization: `Bearer ${await passwordToken(env, 'viewer')}` } });
  assert.equal(res.status, 200);
  return (await res.json()).items;
}

/** Scrolls the log view from top to bottom; returns the text of every row that was visible. */
function readScreen(page) {
  return page.evaluate(async () => {
    const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const log = document.getElementById('log');
    const seen = [];
    const collect = () => {
      const box = log.getBoundingClientRect();
      for (const row of log.querySelectorAll('.line')) {
        const r = row.getBoundingClientRect();
        if (r.bottom > box.top && r.top < box.bottom) seen.push(row.textContent);
      }
    };
    log.scrollTop = 0;
    await frame();
    for (;;) {
      collect();
      if (log.scrollTop + log.clientHeight >= log.scrollHeight - 1) break;
      log.scrollTop += Math.floor(log.clientHeight / 2);
      await frame();
    }
    return seen;
  });
}

test("a terminated pod's logs are readable from the archived list", async () => {
  const started = Date.now();
  const id = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
  const job = `e2e-arch-${id}`;
  const pod = `${job}-x1`;
  const src = `archived-${id}`;
  const count = 150;
  cleanups.push(() => kubectl(env, ['-n', NS, 'delete', 'job', job, '--ignore-not-found', '--wait=false']));
  cleanups.push(() => kubectl(env, ['-n', NS, 'delete', 'logs.kwok.x-k8s.io', pod, '--ignore-not-found', '--wait=false']));
  cleanups.push(() => kubectl(env, ['-n', NS, 'delete', 'pod', pod, '--ignore-not-found', '--wait=false']));

  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await signIn(page, server.base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  await page.waitForSelector('#user:text("viewer")');
  await page.goto(`${server.base}/#/ns/${NS}`);
  await page.waitForSelector('#pods tr[data-pod="debug"]');

  // The Job's pod: it writes `count` numbered lines, then KWOK completes it (no one follows it,
  // so the recorder captures it when it reaches Succeeded).
  await apply(env, { apiVersion: 'batch/v1', kind: 'Job', metadata: { name: job, namespace: NS }, spec: { template: { spec: { restartPolicy: 'Never', containers: [{ name: 'app', image: 'registry.invalid/kubelens/e2e:1' }] } } } });
  const jobUid = (await kubectl(env, ['-n', NS, 'get', 'job', job, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const [file] = await ensurePodLogs(env, NS, pod, ['app']);
  const gen = spawn(env.TESTENV_LOGGEN, ['--file', file, '--count', String(count), '--rate', '1000', '--src', src, '--quiet'], { stdio: 'ignore' });
  assert.equal(await new Promise((r) => gen.once('exit', r)), 0, 'loggen');
  await apply(env, podManifest(env, NS, pod, { labels: { 'job-name': job }, owner: { apiVersion: 'batch/v1', kind: 'Job', name: job, uid: jobUid } }));
  await page.waitForSelector(`#pods tr[data-pod="${pod}"]`, { timeout: 30_000 });
  await waitFor('the pod completes', async () => (await kubectl(env, ['-n', NS, 'get', 'pod', pod, '-o', 'jsonpath={.status.phase}'])) === 'Succeeded', 30_000);
  await waitFor('the recorder captures every line', async () => (await archivedPods()).find((p) => p.name === pod)?.containers?.[0]?.lines === count, 30_000);
  assert.equal(await page.$(`#archived tr[data-archived="${pod}"]`), null, 'not in the archived list while the pod exists');
  // A live pod's archived previous instances (crashy restarted) are not listed as terminated pods.
  if ((await archivedPods()).some((p) => p.name === 'crashy' && p.terminated)) {
    await page.reload(); // read the list again, now that the API lists crashy
    await page.waitForSelector('#pods tr[data-pod="crashy"]', { timeout: 30_000 });
    await page.waitForSelector('#archived tbody tr', { timeout: 30_000 });
    assert.equal(await page.$('#archived tr[data-archived="crashy"]'), null, 'crashy exists: its previous instance is not a terminated pod');
    console.log('crashy: archived previous instance listed by the API, not shown as a terminated pod');
  }

  // Deleted: it leaves the pods list and shows up in the archived list with its expiry.
  await kubectl(env, ['-n', NS, 'delete', 'pod', pod, '--wait=false']);
  const deletedAt = Date.now();
  await page.waitForSelector(`#pods tr[data-pod="${pod}"]`, { state: 'detached', timeout: 30_000 });
  const row = await page.waitForSelector(`#archived tr[data-archived="${pod}"]`, { timeout: 30_000 });
  const expiresAt = await row.$eval('time', (t) => t.getAttribute('datetime'));
  const expires = Date.parse(expiresAt.replace(/(\.\d{3})\d+/, '$1'));
  assert.ok(expires > deletedAt + TTL_MIN * 60_000 - 60_000 && expires < Date.now() + TTL_MIN * 60_000 + 5_000, `expiry ${expiresAt} is ${TTL_MIN} min after the deletion`);
  const cells = await row.$$eval('td', (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[0], pod);
  assert.equal(cells[1], `Job ${job}`);
  assert.equal(cells[2], String(count), 'archived line count');
  assert.match(cells[3], new RegExp(`^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC \\(in ${TTL_MIN} min\\)$`), 'expiry shown');
  await page.screenshot({ path: path.join(shots, 'archived.png') });

  // Opened from the list: read from the archive, every line once, the stream ended complete.
  await row.$eval('a', (a) => a.click());
  await page.waitForSelector('#stream-state.ended', { timeout: 30_000 });
  assert.equal(await page.textContent('#stream-state'), 'ended (complete)');
  assert.equal(await page.$eval('#archived-note', (n) => n.hidden), false, 'archived note shown');
  assert.match(await page.textContent('#archived-note'), /^archived: pod deleted .* · readable until \d{4}-.* UTC \(in \d+ min\)$/);
  assert.equal(await page.$eval('#archived-note time.expires', (t) => t.getAttribute('datetime')), expiresAt, 'same expiry as the list');

  const kept = await page.evaluate(() => window.kubelensLines());
  const seqs = kept.lines.filter((l) => l.includes(`src=${src}`)).map((l) => Number(/seq=(\d+)/.exec(l)[1]));
  assert.deepEqual(seqs, Array.from({ length: count }, (_, i) => i + 1), 'every line once, in order');
  assert.equal(kept.lines.length, count, 'nothing else');
  const screen = new Set((await readScreen(page)).filter((t) => t.includes(`src=${src}`)).map((t) => Number(/seq=(\d+)/.exec(t)[1])));
  const missing = Array.from({ length: count }, (_, i) => i + 1).filter((n) => !screen.has(n));
  assert.deepEqual(missing, [], 'every sequence number was on screen');
  await page.screenshot({ path: path.join(shots, 'archived-log.png') });
  await ctx.close();
  console.log(`archived test: ${((Date.now() - started) / 1000).toFixed(1)} s`);
});
