// The log view's reading tools in a real browser against the real binary and testenv: a link
// that opens the log at a line, whole-log search opening a match in context, JSON lines as
// fields with the server's level filter, an app's pods switched off and on, inspector events.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { appendLines, consoleUp, kubectl, shots, signIn, waitFor } from './harness.mjs';

let env, server, chrome, ctx, page;
const debugLog = () => path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log');
const kept = () => page.evaluate(() => window.kubelensLines());
const open = async (hash) => {
  await page.goto(`${server.base}/${hash}`);
  await page.waitForSelector('#stream-state.live', { timeout: 30_000 });
};

before(async () => {
  ({ env, server, chrome } = await consoleUp());
  ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
  page = await ctx.newPage();
  await signIn(page, server.base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  await page.waitForSelector('#namespaces a');
});

after(async () => {
  await ctx?.close();
  await chrome?.close();
  server?.stop();
});

test('the link on a line opens the log at that line, with the lines around it, still live', async () => {
  await open('#/ns/team-a/pod/debug');
  const marker = `link-e2e-${Date.now()}`;
  appendLines(debugLog(), Array.from({ length: 600 }, (_, i) => `${marker} n=${i} end`));
  await page.waitForSelector(`#log .line:has-text("${marker} n=599 end")`, { timeout: 30_000 });
  const link = page.locator(`#log .line:has-text("${marker} n=590 end") a.link`);
  const id = await page.locator(`#log .line:has-text("${marker} n=590 end")`).getAttribute('data-id');
  const href = await link.getAttribute('href');
  assert.equal(new URLSearchParams(href.split('?')[1]).get('around'), id, `the link names the line: ${href}`);
  await link.click();
  await page.waitForSelector(`#log .line.target:has-text("${marker} n=590 end")`, { timeout: 30_000 });
  await waitFor('the lines after it', async () => (await kept()).lines.some((l) => l.includes(`${marker} n=599 end`)), 30_000);
  const mine = (await kept()).lines.filter((l) => l.startsWith(marker));
  // 200 lines before it (the view's context), the line, and the 9 written after it (live).
  assert.equal(mine[0], `${marker} n=390 end`);
  assert.equal(mine.length, 210, `lines ${mine[0]} … ${mine.at(-1)}`);
  assert.equal(await page.textContent('#follow'), 'follow', 'the view stays at the line (paused)');
  const inView = await page.$eval('#log .line.target', (row) => {
    const r = row.getBoundingClientRect(), s = document.getElementById('log').getBoundingClientRect();
    return r.top >= s.top && r.bottom <= s.bottom;
  });
  assert.ok(inView, 'the line is on screen');
  await page.screenshot({ path: path.join(shots, 'line-link.png') });
  // The stream goes on live: new lines are counted, not scrolled to.
  appendLines(debugLog(), [`${marker} later-1`, `${marker} later-2`]);
  await page.waitForSelector('#new-lines:text("2 new lines")', { timeout: 30_000 });

  // A line the log does not have is a clear end, not a reconnect loop.
  await page.goto(`${server.base}/#/ns/team-a/pod/debug?around=${encodeURIComponent('2001-01-01T00:00:00.000000001Z~0')}`);
  await page.waitForSelector('#stream-state.ended', { timeout: 30_000 });
  assert.match(await page.textContent('#stream-state'), /line_not_found|line_rotated/);
});

test('search finds every match in the whole log, beyond what the view holds, and opens one at its line', async () => {
  const marker = `search-e2e-${Date.now()}`;
  appendLines(debugLog(), Array.from({ length: 1000 }, (_, i) => `${marker} k=${i}${i % 100 === 0 ? ' needle' : ''} end`));
  await open('#/ns/team-a/pod/debug?tailLines=5');
  await page.click('#search-open');
  await page.fill('#search-q', `${marker}.*needle`);
  await page.click('#search-run');
  await page.waitForSelector('#search-progress[data-state="complete"]', { timeout: 60_000 });
  const found = await page.$$eval('#search-results li .text', (ts) => ts.map((t) => t.textContent));
  assert.deepEqual(found, Array.from({ length: 10 }, (_, i) => `${marker} k=${i * 100} needle end`));
  assert.match(await page.textContent('#search-progress'), /^10 matches in \d+ lines/);
  await page.screenshot({ path: path.join(shots, 'search.png') });
  await page.click('#search-results li:first-child a.open');
  await page.waitForSelector(`#log .line.target:has-text("${marker} k=0 needle end")`, { timeout: 30_000 }).catch(async (e) => {
    console.log('the view at the match:', await page.evaluate(() => location.hash), await page.textContent('#stream-state'), JSON.stringify((await kept()).lines.slice(0, 3)), (await kept()).lines.length);
    throw e;
  });

  // A bad pattern is the server's clear error.
  await page.click('#search-open');
  await page.fill('#search-q', '(unclosed');
  await page.click('#search-run');
  await page.waitForSelector('#search-progress[data-state="error"]', { timeout: 30_000 });
  assert.match(await page.textContent('#search-progress'), /bad_pattern/);
});

test('JSON lines show as fields, and the level filter runs on the server', async () => {
  const marker = `fields-e2e-${Date.now()}`;
  appendLines(debugLog(), [
    JSON.stringify({ level: 'warn', msg: `${marker} slow`, ms: 812 }),
    JSON.stringify({ level: 'info', msg: `${marker} fine` }),
    `${marker} plain text`,
  ]);
  await open('#/ns/team-a/pod/debug?tailLines=50');
  await page.waitForSelector(`#log .line:has-text("${marker} plain text")`, { timeout: 30_000 });
  await page.selectOption('#json', 'fields');
  await page.waitForSelector(`#log .line:has(.f .v:text("${marker} slow"))`, { timeout: 30_000 });
  const fields = await page.$$eval(`#log .line:has(.f .v:text("${marker} slow")) .f`, (fs) => fs.map((f) => f.textContent));
  assert.deepEqual(fields, ['level=warn', `msg=${marker} slow`, 'ms=812']);
  assert.equal(await page.$eval(`#log .line:has(.f .v:text("${marker} slow"))`, (l) => l.classList.contains('warn')), true, 'the server\'s level colours it');
  await page.screenshot({ path: path.join(shots, 'fields.png') });
  await page.selectOption('#level', 'warn');
  await page.waitForSelector(`#log .line:has(.f .v:text("${marker} slow"))`, { timeout: 30_000 });
  await waitFor('the level filter', async () => (await kept()).lines.every((l) => !l.includes(`${marker} fine`) && !l.includes(`${marker} plain`)), 10_000);
  assert.equal((await kept()).lines.filter((l) => l.includes(marker)).length, 1);
});

test('grep matches are marked in the text the user sees, with <, & and ANSI colours intact', async () => {
  const marker = `mark-e2e-${Date.now()}`;
  appendLines(debugLog(), [`${marker} a<b> & c \x1b[31mred-word\x1b[0m end`]);
  await open(`#/ns/team-a/pod/debug?grep=${encodeURIComponent(`${marker}|<b> &|red-word`)}`);
  const row = page.locator(`#log .line:has-text("${marker}")`);
  await row.waitFor({ timeout: 30_000 });
  assert.equal(await row.locator('.text').textContent(), `${marker} a<b> & c red-word end`, 'the line reads as written');
  assert.deepEqual(await row.locator('mark').allTextContents(), [marker, '<b> &', 'red-word']);
  // The match inside an ANSI colour keeps its colour.
  assert.ok(await row.locator('.text span[class*="ansi-red"] mark').count(), await row.locator('.text').innerHTML());
});

test('an app view switches a pod\'s lines off and on without re-reading', async () => {
  await open('#/ns/team-a/app/db?kind=StatefulSet');
  const marker = `toggle-e2e-${Date.now()}`;
  for (const pod of ['db-0', 'db-1']) appendLines(path.join(env.TESTENV_LOG_DIR, `team-a/${pod}/postgres.log`), [`${marker} from ${pod}`]);
  for (const pod of ['db-0', 'db-1']) await page.waitForSelector(`#log .line:has-text("${marker} from ${pod}")`, { timeout: 30_000 });
  await page.click('#pod-toggles button[data-pod="db-1"]');
  await waitFor('db-1 hidden', async () => (await page.$$('#log .line .pod:text-is("db-1")')).length === 0, 10_000);
  assert.ok(await page.$(`#log .line:has-text("${marker} from db-0")`), 'db-0 stays');
  assert.equal(await page.$eval('#pod-toggles button[data-pod="db-1"]', (b) => b.classList.contains('off')), true);
  await page.screenshot({ path: path.join(shots, 'app-toggle.png') });
  await page.click('#pod-toggles button[data-pod="db-1"]');
  await page.waitForSelector(`#log .line:has-text("${marker} from db-1")`, { timeout: 10_000 });
});

test('the inspector lists the pod\'s events', async () => {
  const pod = 'web-7d9f8b6c5d-x2k4p';
  const reason = `E2eProbe${Date.now()}`;
  const uid = (await kubectl(env, ['-n', 'team-a', 'get', 'pod', pod, '-o', 'jsonpath={.metadata.uid}'])).trim();
  await kubectl(env, ['create', '-f', '-'], {
    apiVersion: 'v1', kind: 'Event', metadata: { name: `${pod}.${reason.toLowerCase()}`, namespace: 'team-a' },
    involvedObject: { kind: 'Pod', name: pod, namespace: 'team-a', uid }, type: 'Warning', reason, message: 'probe from the console test', count: 3,
    firstTimestamp: new Date().toISOString(), lastTimestamp: new Date().toISOString(), source: { component: 'e2e' },
  });
  try {
    await page.goto(`${server.base}/#/ns/team-a/inspect/${pod}`);
    await page.waitForSelector(`#events tr:has-text("${reason}")`, { timeout: 30_000 });
    const row = await page.$eval(`#events tr:has-text("${reason}")`, (r) => [...r.children].map((c) => c.textContent));
    assert.deepEqual(row.slice(0, 4), ['Warning', reason, 'probe from the console test', '3']);
  } finally {
    await kubectl(env, ['-n', 'team-a', 'delete', 'event', `${pod}.${reason.toLowerCase()}`, '--ignore-not-found']);
  }
});
