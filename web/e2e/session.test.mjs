// The session (GET/PUT /api/v1/session) in a real browser: what the console persists — theme,
// pinned resources, the wrap preference and the open resource — survives a reload and is
// restored in a second browser context signed in as the same user; and a change made in one
// context is not overwritten by a stale one (If-Match, 412, re-applied change).
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { allowWebOrigins, browser, passwordToken, shots, signIn, startKubelens, testenv, waitFor } from './harness.mjs';

let env, server, chrome;

before(async () => {
  env = testenv();
  server = await startKubelens(env); // its own memory storage: the session starts empty
  await allowWebOrigins(env, [server.base]);
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  server?.stop();
});

const DARK_BG = 'rgb(13, 17, 23)';
const LIGHT_BG = 'rgb(255, 255, 255)';
const POD = { kind: 'pod', namespace: 'team-a', name: 'debug' };
const NS = { kind: 'namespace', namespace: 'team-b' };

/** The session the server stores for viewer, read with a token of its own (not the page's). */
async function stored() {
  const res = await fetch(`${server.base}/api/v1/session`, { headers: { Authorization: `Bearer ${await passwordToken(env, 'viewer')}` } });
  assert.equal(res.status, 200);
  return res.json();
}

const background = (page) => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
const pinned = (page) => page.$$eval('#pinned a', (as) => as.map((a) => a.getAttribute('href')));
const saved = (page) => page.waitForSelector('html[data-session="saved"]', { timeout: 20_000 });

async function newPage() {
  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await signIn(page, server.base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  return { ctx, page };
}

/** Everything changed in the first context is shown: dark theme, both pins, wrap on the pod. */
async function assertRestored(page, where) {
  await page.waitForSelector('html[data-theme="dark"]', { timeout: 30_000 });
  assert.equal(await background(page), DARK_BG, `${where}: dark theme applied`);
  await waitFor(`${where}: pins`, async () => (await pinned(page)).length === 2, 20_000);
  assert.deepEqual(await pinned(page), ['#/ns/team-a/pod/debug', '#/ns/team-b'], `${where}: pinned resources in order`);
  await page.click('#pinned a[href="#/ns/team-a/pod/debug"]');
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
  assert.equal(await page.isChecked('#wrap'), true, `${where}: wrap preference`);
  assert.equal(await page.$eval('#log', (l) => l.classList.contains('wrap')), true, `${where}: wrap applied`);
  assert.equal(await page.getAttribute('#pin', 'aria-pressed'), 'true', `${where}: pod shown as pinned`);
}

test('the session survives a reload and a second browser context', async () => {
  const started = Date.now();
  const { ctx, page } = await newPage();
  await page.waitForSelector('#user:text("viewer")');
  await saved(page);
  assert.equal(await background(page), LIGHT_BG, 'fresh session: system theme (light in headless Chromium)');
  assert.deepEqual(await pinned(page), [], 'fresh session: nothing pinned');

  // Change what the console persists: pin a pod, wrap its log, dark theme, pin a namespace.
  await page.goto(`${server.base}/#/ns/team-a/pod/debug`);
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
  await page.click('#pin');
  await page.waitForSelector('#pin[aria-pressed="true"]');
  await page.check('#wrap');
  await page.click('#theme');
  assert.equal(await background(page), DARK_BG);
  await page.goto(`${server.base}/#/ns/team-b`);
  await page.waitForSelector('#pods tr[data-pod]');
  await page.click('#pin');
  await saved(page);
  const doc = await stored();
  assert.deepEqual(doc, { activeResources: [NS], pinnedResources: [POD, NS], theme: 'dark', uiPrefs: { wrap: true } }, 'stored by the server');

  // A reload restores all of it.
  await page.reload();
  await waitFor('hash after reload', async () => (await page.evaluate(() => location.hash)) === '#/ns/team-b', 30_000);
  await page.waitForSelector('#pods tr[data-pod]');
  await assertRestored(page, 'reload');
  await page.screenshot({ path: path.join(shots, 'dark-pinned.png') });

  // A new browser context (no cookies, no storage) signed in as viewer: the last open
  // resource (the pod, opened from the pin bar above) and everything else.
  const second = await newPage();
  await waitFor('last open resource in the second context', async () => (await second.page.evaluate(() => location.hash)) === '#/ns/team-a/pod/debug', 30_000);
  await assertRestored(second.page, 'second context');

  // The second context unpins the pod; then the first one (its ETag now stale) changes the
  // theme. Its PUT gets 412, re-reads, and re-applies only the theme change: the unpin made
  // in the other context survives.
  await saved(second.page);
  await second.page.click('#pin');
  await second.page.waitForSelector('#pin[aria-pressed="false"]');
  await saved(second.page);
  assert.deepEqual((await stored()).pinnedResources, [NS]);
  await page.click('#theme');
  await saved(page);
  const merged = await stored();
  assert.equal(merged.theme, 'light', 'the first context\'s change is stored');
  assert.deepEqual(merged.pinnedResources, [NS], 'the second context\'s unpin is not overwritten by a stale document');
  await page.waitForSelector('#pin[aria-pressed="false"]', { timeout: 10_000 });
  assert.deepEqual(await pinned(page), ['#/ns/team-b'], 'the first context shows the merged document');
  assert.equal(await background(page), LIGHT_BG);
  await second.ctx.close();
  await ctx.close();
  console.log(`session test: ${((Date.now() - started) / 1000).toFixed(1)} s`);
});
