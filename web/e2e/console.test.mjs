// The console in a real browser against the real binary, Keycloak and kube-apiserver + KWOK.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { appendLines, consoleUp, shots, signIn, waitFor } from './harness.mjs';

let env, server, chrome;

before(async () => {
  ({ env, server, chrome } = await consoleUp());
});

after(async () => {
  await chrome?.close();
  server?.stop();
});

const pw = (user) => env[`TESTENV_USER_${user.toUpperCase()}_PASSWORD`];

test('viewer signs in through Keycloak, sees only allowlisted namespaces, follows a pod', async () => {
  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await signIn(page, server.base, 'viewer', pw('viewer'));
  await page.waitForSelector('#namespaces a');
  const names = await page.$$eval('#namespaces a', (as) => as.map((a) => a.textContent));
  assert.deepEqual(names.sort(), ['team-a', 'team-b']);
  assert.ok(!names.includes('secret-ns') && !names.includes('kubelens'));
  await page.screenshot({ path: path.join(shots, 'namespaces.png') });

  await page.click('#namespaces a:text("team-a")');
  await page.waitForSelector('#pods tr[data-pod="debug"]');
  const pods = await page.$$eval('#pods tr[data-pod]', (rows) => rows.map((r) => r.getAttribute('data-pod')));
  assert.ok(pods.includes('web-7d9f8b6c5d-x2k4p'));
  assert.ok(!pods.includes('hidden-canary'), 'a filtered pod is never listed');
  await page.waitForSelector('#apps a:text("web")');
  await page.screenshot({ path: path.join(shots, 'pods.png') });

  await page.click('#pods a:text("debug")');
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
  const marker = `console-e2e-${Date.now()}`;
  appendLines(path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log'), Array.from({ length: 20 }, (_, i) => `${marker} n=${i + 1} level=${i === 19 ? 'error' : 'info'}`));
  await page.waitForSelector(`#log .line:has-text("${marker} n=20")`, { timeout: 30_000 });
  const seen = await page.$$eval('#log .line', (ls, m) => ls.map((l) => l.textContent).filter((t) => t.includes(m)), marker);
  assert.equal(seen.length, 20, `every line once: ${seen.length}`);
  assert.equal(await page.$eval(`#log .line:has-text("${marker} n=20")`, (l) => l.classList.contains('error')), true, 'level colouring');
  await page.screenshot({ path: path.join(shots, 'pod-log.png') });

  // Pause: new lines are counted in the badge instead of scrolling.
  await page.click('#follow');
  appendLines(path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log'), [`${marker} paused-1`, `${marker} paused-2`]);
  await page.waitForSelector('#new-lines:text("2 new lines")', { timeout: 30_000 });

  // Session: a reload (and a second browser context) restores the open log view.
  await page.goto(`${server.base}/`);
  await waitFor('session restore', async () => (await page.evaluate(() => location.hash)) === '#/ns/team-a/pod/debug', 30_000);
  const ctx2 = await chrome.newContext();
  const page2 = await ctx2.newPage();
  await signIn(page2, server.base, 'viewer', pw('viewer'));
  await waitFor('session in a second context', async () => (await page2.evaluate(() => location.hash)) === '#/ns/team-a/pod/debug', 30_000);
  await ctx2.close();
  await ctx.close();
});

test('an app log merges its pods with a colour per pod', async () => {
  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await signIn(page, server.base, 'viewer', pw('viewer'));
  await page.waitForSelector('#user:text("' + 'viewer' + '")');
  await page.goto(`${server.base}/#/ns/team-a/app/db?kind=StatefulSet`);
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
  const marker = `app-e2e-${Date.now()}`;
  for (const pod of ['db-0', 'db-1']) appendLines(path.join(env.TESTENV_LOG_DIR, `team-a/${pod}/postgres.log`), [`${marker} from ${pod}`]);
  for (const pod of ['db-0', 'db-1']) await page.waitForSelector(`#log .line:has-text("${marker} from ${pod}")`, { timeout: 30_000 });
  const pods = await page.$$eval('#log .line .pod', (ps) => [...new Set(ps.map((p) => p.className))]);
  assert.ok(pods.length >= 2, `distinct pod colours: ${pods}`);
  await page.screenshot({ path: path.join(shots, 'app-log.png') });
  await ctx.close();
});

test('nogroup gets the not-allowed page', async () => {
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  await signIn(page, server.base, 'nogroup', pw('nogroup'));
  await page.waitForSelector('#not-allowed', { timeout: 30_000 });
  await page.screenshot({ path: path.join(shots, 'not-allowed.png') });
  await ctx.close();
});

test('the inspector masks secrets for viewer and shows them to admin', async () => {
  const pod = 'web-7d9f8b6c5d-x2k4p';
  for (const [user, masked] of [['viewer', true], ['admin', false]]) {
    const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    await signIn(page, server.base, user, pw(user));
    await page.waitForSelector(`#user:text("${user}")`);
    await page.goto(`${server.base}/#/ns/team-a/inspect/${pod}`);
    await page.waitForSelector('#env tr');
    const text = await page.$eval('#env', (t) => t.textContent);
    assert.equal(text.includes('hunter2-literal-secret'), !masked, `${user}: ${text}`);
    if (masked) assert.ok(await page.$('#env tr.masked'), 'masked rows are marked');
    if (user === 'viewer') await page.screenshot({ path: path.join(shots, 'inspector.png') });
    await ctx.close();
  }
});
