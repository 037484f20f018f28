// Eight log views open at once in one browser keep streaming. Browsers allow six HTTP/1.1
// connections per origin (shared by every tab of a profile), so over plain HTTP/1.1 some of
// eight EventSources wait; over TLS kubelens negotiates HTTP/2 (ALPN), where one connection
// carries every stream. The HTTP/1.1 half is the control that shows the limit is real.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { allowWebOrigins, appendLines, browser, selfSignedCert, signIn, startKubelens, testenv, waitFor } from './harness.mjs';

const TABS = 8;
let env, tlsServer, plainServer, chrome;

before(async () => {
  env = testenv();
  const { cert, key } = selfSignedCert(fs.mkdtempSync(path.join(os.tmpdir(), 'kubelens-tabs-')));
  tlsServer = await startKubelens(env, '', `  tls:\n    cert_file: ${cert}\n    key_file: ${key}\n`);
  plainServer = await startKubelens(env);
  await allowWebOrigins(env, [tlsServer.base, plainServer.base]);
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  tlsServer?.stop();
  plainServer?.stop();
});

/** Signs in at `base`, opens `TABS` tabs following team-a/debug; returns the pages. */
async function openTabs(base) {
  const ctx = await chrome.newContext({ viewport: { width: 1024, height: 700 }, ignoreHTTPSErrors: true });
  const first = await ctx.newPage();
  await signIn(first, base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
  await first.waitForSelector('#user:text("viewer")');
  const pages = [first];
  while (pages.length < TABS) pages.push(await ctx.newPage());
  for (const page of pages) await page.goto(`${base}/#/ns/team-a/pod/debug?tailLines=0`);
  return { ctx, pages };
}

const liveCount = (pages) => Promise.all(pages.map((p) => p.$('#stream-state.live').then((e) => e !== null).catch(() => false)))
  .then((live) => live.filter(Boolean).length);

test('eight log views stream at once over HTTP/2 (TLS); over HTTP/1.1 the browser holds some back', async () => {
  const { ctx, pages } = await openTabs(tlsServer.base);
  await waitFor(`all ${TABS} views live over HTTP/2`, async () => (await liveCount(pages)) === TABS, 30_000);
  const protocols = await Promise.all(pages.map((p) => p.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol)));
  assert.deepEqual([...new Set(protocols)], ['h2'], `protocols: ${protocols}`);
  const tag = `tabs-${Date.now()}`;
  appendLines(path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log'), Array.from({ length: 20 }, (_, i) => `${tag} seq=${i + 1}`));
  for (const [i, page] of pages.entries()) {
    const seqs = await waitFor(`tab ${i + 1} shows the 20 lines`, async () => {
      const view = await page.evaluate(() => window.kubelensLines());
      const mine = view.lines.filter((l) => l.includes(tag)).map((l) => Number(/seq=(\d+)/.exec(l)[1]));
      return mine.length >= 20 ? mine : null;
    }, 30_000);
    assert.deepEqual(seqs, Array.from({ length: 20 }, (_, k) => k + 1), `tab ${i + 1}`);
  }
  await ctx.close();

  // The control: the same eight tabs over plain HTTP/1.1. Six connections per origin: at
  // most six views get a stream; the others stay "connecting" while those are open.
  const plain = await openTabs(plainServer.base);
  await waitFor('six views live over HTTP/1.1', async () => (await liveCount(plain.pages)) >= 6, 30_000);
  await new Promise((r) => setTimeout(r, 5_000));
  const live = await liveCount(plain.pages);
  assert.ok(live < TABS, `over HTTP/1.1 only ${live} of ${TABS} could be live`);
  console.log(`HTTP/2: ${TABS} of ${TABS} views live and complete; HTTP/1.1: ${live} of ${TABS} live`);
  await plain.ctx.close();
});
