// Token expiry mid-stream: the console client's access tokens live 20 s (a client setting,
// restored afterwards) and kubelens ends a stream 1 s after its token's expiry
// (`auth.stream_token_grace: 1s`). While a pod logs 200 lines/s for ~70 s, every stream ends
// `token_expired` several times; the console refreshes its token (keycloak-js), renews the
// stream-credential cookie, and the browser's own EventSource reconnect resumes from
// Last-Event-ID: every line on screen exactly once, and the view never shows "ended".
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { allowWebOrigins, browser, setWebTokenLifespan, signIn, startKubelens, testenv, waitFor } from './harness.mjs';

const LIFESPAN_S = 20;
let env, server, chrome;

before(async () => {
  env = testenv();
  server = await startKubelens(env, '', '', '  stream_token_grace: 1s\n');
  await allowWebOrigins(env, [server.base]);
  await setWebTokenLifespan(env, LIFESPAN_S);
  chrome = await browser();
});

after(async () => {
  await setWebTokenLifespan(env, null).catch(() => undefined);
  await chrome?.close();
  server?.stop();
});

test('a stream outlives several token expiries: refreshed, resumed, nothing lost or repeated', async () => {
  const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  const streamRequests = [];
  page.on('request', (r) => { if (r.url().includes('/api/v1/namespaces/team-a/pods/debug/logs')) streamRequests.push(Date.now()); });
  // Keycloak's token answers (code exchange, then each refresh): their `expires_in`.
  const tokenLifetimes = [];
  page.on('response', async (r) => {
    if (!r.url().endsWith('/protocol/openid-connect/token') || r.request().method() !== 'POST') return;
    const body = await r.json().catch(() => null);
    if (body?.expires_in) tokenLifetimes.push(body.expires_in);
  });
  await signIn(page, server.base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  await page.waitForSelector('#user:text("viewer")');
  await waitFor('the first token', () => tokenLifetimes.length > 0, 10_000);
  assert.ok(tokenLifetimes[0] <= LIFESPAN_S, `the console got a short-lived token: ${tokenLifetimes}`);
  await page.goto(`${server.base}/#/ns/team-a/pod/debug?tailLines=0`);
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
  // Record every state the view shows (an "ended" would need a manual reload).
  await page.evaluate(() => {
    window.kubelensStates = [];
    const el = document.querySelector('#stream-state');
    new MutationObserver(() => window.kubelensStates.push(`${el.className}|${el.textContent}`)).observe(el, { attributes: true, childList: true, subtree: true, characterData: true });
  });
  const file = path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log');
  const src = `expiry-${Date.now()}`;
  const rate = 200, seconds = 70;
  await new Promise((resolve, reject) => {
    const gen = spawn(env.TESTENV_LOGGEN, ['--file', file, '--count', String(rate * seconds), '--rate', String(rate), '--src', src, '--quiet'], { stdio: 'ignore' });
    gen.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`loggen exited ${code}`))));
  });
  const written = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(`src=${src}`)).length;
  assert.equal(written, rate * seconds);
  const seqs = await waitFor('every line on screen', async () => {
    const view = await page.evaluate(() => window.kubelensLines());
    const mine = view.lines.filter((l) => l.includes(`src=${src}`)).map((l) => Number(/seq=(\d+)/.exec(l)[1]));
    return mine.length >= written ? mine : null;
  }, 60_000);
  assert.deepEqual(seqs, Array.from({ length: written }, (_, i) => i + 1), 'every line exactly once, in order');
  const states = await page.evaluate(() => window.kubelensStates);
  assert.ok(!states.some((s) => s.includes('ended')), `the view never ended: ${states.join(' / ')}`);
  // 70 s of 20 s tokens (+1 s grace): the first stream and at least two reconnects after expiry.
  assert.ok(streamRequests.length >= 3, `stream requests: ${streamRequests.length}`);
  assert.ok(states.some((s) => s.includes('token_expired')), `a token_expired end was seen: ${states.join(' / ')}`);
  assert.ok(tokenLifetimes.length >= 3, `the console refreshed its token: ${tokenLifetimes.length} token answers`);
  // The last cut (or token end) may have landed after the last line: the view must get back
  // to live by itself, which can take a reconnect.
  await waitFor('the view live again', async () => (await page.$eval('#stream-state', (e) => e.className)) === 'state live', 30_000);
  console.log(`${streamRequests.length} stream requests, ${written} lines exactly once across token expiries`);
  await ctx.close();
});
