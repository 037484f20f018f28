// A page on another origin listed in server.cors_allowed_origins can read a log stream; a
// page on an unlisted origin cannot (the browser enforces it on the server's CORS answer).
// Both ways a browser frontend reads: fetch with a bearer token, and the native EventSource
// with the stream-credential cookie (credentialed CORS: the cookie is set by a credentialed
// POST and sent by `withCredentials`; the test's origins are other ports of 127.0.0.1, i.e.
// the same site, as a console on console.example.com and kubelens on api.example.com are).
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { browser, freePort, startKubelens, testenv } from './harness.mjs';

let env, server, chrome;
const pages = [];

/** A blank page served on its own origin. */
async function origin() {
  const port = await freePort();
  const srv = http.createServer((_, res) => { res.setHeader('content-type', 'text/html'); res.end('<!doctype html><title>other origin</title>'); });
  await new Promise((r) => srv.listen(port, '127.0.0.1', r));
  pages.push(srv);
  return `http://127.0.0.1:${port}`;
}

let allowed, unlisted;
before(async () => {
  env = testenv();
  allowed = await origin();
  unlisted = await origin();
  server = await startKubelens(env, '', `  cors_allowed_origins: [${allowed}]\n`);
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  server?.stop();
  for (const p of pages) p.close();
});

async function readStream(pageOrigin, token) {
  const ctx = await chrome.newContext();
  const page = await ctx.newPage();
  await page.goto(`${pageOrigin}/`);
  const result = await page.evaluate(async ({ url, token }) => {
    try {
      const res = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
      const reader = res.body.getReader();
      let text = '';
      while (!text.includes('event: log')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      await reader.cancel();
      return text.includes('event: log') ? 'read' : 'no lines';
    } catch (e) {
      return `blocked: ${e}`;
    }
  }, { url: `${server.base}/api/v1/namespaces/team-a/pods/debug/logs?tailLines=3`, token });
  await ctx.close();
  return result;
}

async function viewerToken() {
  const form = new URLSearchParams({ grant_type: 'password', client_id: env.TESTENV_WEB_CLIENT_ID, username: 'viewer', password: env.TESTENV_USER_VIEWER_PASSWORD });
  const { access_token: token } = await (await fetch(`${env.TESTENV_KEYCLOAK_URL}/realms/${env.TESTENV_REALM}/protocol/openid-connect/token`, { method: 'POST', body: form })).json();
  assert.ok(token);
  return token;
}

test('a listed origin reads a stream, an unlisted one cannot', async () => {
  const token = await viewerToken();
  assert.equal(await readStream(allowed, token), 'read');
  assert.match(await readStream(unlisted, token), /^blocked: TypeError/);
});

/** A page on `pageOrigin` in `ctx` obtains the stream cookie (when `token` is given), then
 *  reads one line with EventSource. */
async function readWithCookie(ctx, pageOrigin, token) {
  const page = await ctx.newPage();
  await page.goto(`${pageOrigin}/`);
  const result = await page.evaluate(async ({ base, token }) => {
    if (token) {
      try {
        const res = await fetch(`${base}/api/v1/stream-credential`, { method: 'POST', credentials: 'include', headers: { Authorization: `Bearer ${token}` } });
        if (!res.ok) return `credential ${res.status}`;
      } catch (e) {
        return `blocked: ${e}`;
      }
    }
    return await new Promise((resolve) => {
      const es = new EventSource(`${base}/api/v1/namespaces/team-a/pods/debug/logs?tailLines=3`, { withCredentials: true });
      const done = (r) => { es.close(); resolve(r); };
      es.addEventListener('log', () => done('read'));
      es.onerror = () => { if (es.readyState === EventSource.CLOSED) done('refused'); };
      setTimeout(() => done('timeout'), 20_000);
    });
  }, { base: server.base, token });
  await page.close();
  return result;
}

test('a listed origin reads a stream with the stream cookie over EventSource, an unlisted one cannot', async () => {
  const token = await viewerToken();
  const ctx = await chrome.newContext();
  try {
    assert.equal(await readWithCookie(ctx, allowed, token), 'read');
    // The browser now holds the cookie (it is per site, not per origin), yet a page on an
    // unlisted origin cannot read the stream with it, nor obtain one itself.
    assert.equal(await readWithCookie(ctx, unlisted, null), 'refused');
    assert.match(await readWithCookie(ctx, unlisted, token), /^blocked: TypeError/);
    // And the cookie is what authenticated: without it the listed origin is refused too.
    await ctx.clearCookies();
    assert.equal(await readWithCookie(ctx, allowed, null), 'refused');
  } finally {
    await ctx.close();
  }
});
