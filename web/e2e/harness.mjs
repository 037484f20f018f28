// Starts the real kubelens binary against the running testenv (testenv/run exports the
// TESTENV_* variables) with the built console (web/dist), and a system Chromium through
// playwright-core (never a downloaded browser).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '../..');
export const shots = path.join(repo, 'docs/console');

export function testenv() {
  const file = process.env.KUBELENS_TESTENV_ENV ?? (process.env.TESTENV_DIR ? path.join(process.env.TESTENV_DIR, 'env') : path.join(repo, 'target/testenv/env'));
  if (!fs.existsSync(file)) throw new Error(`testenv not running (no ${file}): run testenv/run -- npm --prefix web run e2e`);
  const env = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on('error', reject);
  });
}

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function waitFor(what, check, ms = 60_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try { const v = await check(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
}

export async function startKubelens(env, extra = '', serverExtra = '', authExtra = '') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubelens-web-e2e-'));
  const kubeconfig = path.join(dir, 'kubeconfig');
  fs.writeFileSync(kubeconfig, `apiVersion: v1
kind: Config
clusters: [{name: testenv, cluster: {server: "${env.TESTENV_APISERVER_URL}", certificate-authority: "${env.TESTENV_APISERVER_CA}"}}]
users: [{name: sa, user: {token: "${env.TESTENV_SA_TOKEN}"}}]
contexts: [{name: sa, context: {cluster: testenv, user: sa}}]
current-context: sa
`);
  const port = await freePort();
  const config = path.join(dir, 'config.yaml');
  fs.writeFileSync(config, `server:
  listen: 127.0.0.1:${port}
  shutdown_grace: 2s
  web_root: ${path.join(repo, 'web/dist')}
  web_client_id: ${env.TESTENV_WEB_CLIENT_ID}
${serverExtra}auth:
  keycloak_url: ${env.TESTENV_KEYCLOAK_URL}
  realm: ${env.TESTENV_REALM}
  client_id: ${env.TESTENV_BACKEND_CLIENT_ID}
  trusted_clients: [${env.TESTENV_WEB_CLIENT_ID}]
  allowed_groups: [k8s-logs-access]
  admin_group: k8s-admin-access
${authExtra}kubernetes:
  kubeconfig: ${kubeconfig}
namespaces:
  allowed: [team-a, team-b]
filters:
  exclude_labels:
    kubelens.io/hide: "true"
storage:
  backend: memory
${extra}`);
  const bin = process.env.KUBELENS_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(repo, 'target'), 'debug/kubelens');
  const log = fs.openSync(path.join(dir, 'kubelens.log'), 'w');
  const child = spawn(bin, ['--config', config, '--log-format', 'json'], { stdio: ['ignore', log, log] });
  const tls = /^\s+tls:/m.test(serverExtra);
  const base = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  await waitFor('kubelens /readyz', () => (tls ? httpsOk(`${base}/readyz`) : fetch(`${base}/readyz`).then((r) => r.ok)), 90_000);
  return { base, dir, port, stop: () => child.kill('SIGTERM'), logFile: path.join(dir, 'kubelens.log') };
}

/** GET over TLS without verifying the (test's self-signed) certificate: true on a 200. */
function httpsOk(url) {
  return new Promise((resolve, reject) => {
    https.get(url, { rejectUnauthorized: false }, (res) => { res.resume(); resolve(res.statusCode === 200); }).on('error', reject);
  });
}

/** A self-signed certificate for 127.0.0.1 (openssl CLI) in `dir`: `{ cert, key }` paths. */
/**
 * The usual start of a console test file: testenv's env, a kubelens serving the console (its
 * origin allowed by the Keycloak client), Chromium, and the screenshot folder.
 */
export async function consoleUp(extra = '') {
  const env = testenv();
  const server = await startKubelens(env, extra);
  await allowWebOrigins(env, [server.base]);
  const chrome = await browser();
  fs.mkdirSync(shots, { recursive: true });
  return { env, server, chrome };
}

export function selfSignedCert(dir) {
  const cert = path.join(dir, 'tls.crt'), key = path.join(dir, 'tls.key');
  const out = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`openssl: ${out.stderr}`);
  return { cert, key };
}

export async function browser() {
  const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
  // launch() always starts Chromium on a fresh temporary user-data-dir (it refuses one given
  // in args); each test also uses its own browser.newContext() (fresh cookies and storage).
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args, headless: true });
}

/** Signs in through Keycloak's real login page. */
export async function signIn(page, base, user, password) {
  await page.goto(`${base}/`);
  await page.waitForSelector('#username', { timeout: 60_000 });
  await page.fill('#username', user);
  await page.fill('#password', password);
  await page.click('#kc-login');
}

/** Appends CRI lines (current timestamps) to a KWOK-served log file. */
/** The newest timestamp `appendLines` wrote (ms), per file. */
const lastStamp = new Map();

/**
 * Appends CRI lines stamped 1 ms apart from now — and never before the newest line this
 * helper wrote to that file, as a container runtime stamps them: a batch stamped into the
 * future followed soon by another batch must not travel back in time (a stream following
 * the log rightly treats older lines after its position as already seen).
 */
export function appendLines(file, texts) {
  const start = Math.max(Date.now(), (lastStamp.get(file) ?? 0) + 1);
  const body = texts.map((t, i) => `${new Date(start + i).toISOString().replace('Z', '000000Z')} stdout F ${t}\n`).join('');
  lastStamp.set(file, start + texts.length - 1);
  fs.appendFileSync(file, body);
}

/**
 * Adds `origins` to the web origins of the console's Keycloak client through the admin REST
 * API, so Keycloak answers the console's token requests (code exchange, refresh) with CORS
 * headers. testenv's realm allows any redirect URI, but its `+` web origin derives nothing
 * from a `*` redirect URI, and the console's port is picked at random per run.
 */
export async function allowWebOrigins(env, origins) {
  await updateWebClient(env, (client) => { client.webOrigins = [...new Set([...(client.webOrigins ?? []), ...origins])]; });
}

/**
 * Sets how long the console client's access tokens live (`access.token.lifespan`, seconds;
 * `null` = the realm's default again), for token-expiry tests. Tokens issued before keep theirs.
 */
export async function setWebTokenLifespan(env, seconds) {
  await updateWebClient(env, (client) => {
    client.attributes = client.attributes ?? {};
    if (seconds === null) delete client.attributes['access.token.lifespan'];
    else client.attributes['access.token.lifespan'] = String(seconds);
  });
}

/** Reads the console's Keycloak client through the admin REST API, lets `change` edit it, writes it back. */
async function updateWebClient(env, change) {
  const kc = env.TESTENV_KEYCLOAK_URL;
  const form = new URLSearchParams({ grant_type: 'password', client_id: 'admin-cli', username: env.TESTENV_KEYCLOAK_ADMIN_USER, password: env.TESTENV_KEYCLOAK_ADMIN_PASSWORD });
  const { access_token: token } = await (await fetch(`${kc}/realms/master/protocol/openid-connect/token`, { method: 'POST', body: form })).json();
  const auth = { Authorization: `Bearer ${token}` };
  const [client] = await (await fetch(`${kc}/admin/realms/${env.TESTENV_REALM}/clients?clientId=${env.TESTENV_WEB_CLIENT_ID}`, { headers: auth })).json();
  change(client);
  const res = await fetch(`${kc}/admin/realms/${env.TESTENV_REALM}/clients/${client.id}`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(client) });
  if (!res.ok) throw new Error(`Keycloak admin API: ${res.status}`);
}

/** An access token of `user` from Keycloak's token endpoint (password grant, the console's client). */
export async function passwordToken(env, user) {
  const form = new URLSearchParams({ grant_type: 'password', client_id: env.TESTENV_WEB_CLIENT_ID, username: user, password: env[`TESTENV_USER_${user.toUpperCase()}_PASSWORD`], scope: 'openid' });
  const res = await fetch(`${env.TESTENV_KEYCLOAK_URL}/realms/${env.TESTENV_REALM}/protocol/openid-connect/token`, { method: 'POST', body: form });
  if (!res.ok) throw new Error(`password grant for ${user}: ${res.status} ${await res.text()}`);
  return (await res.json()).access_token;
}

/** Runs testenv's kubectl as the cluster admin; resolves with stdout, rejects with stderr. */
export function kubectl(env, args, input) {
  return new Promise((resolve, reject) => {
    const child = spawn(env.TESTENV_KUBECTL, ['--kubeconfig', env.TESTENV_KUBECONFIG, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`kubectl ${args.join(' ')}: ${err.trim()}`))));
    child.stdin.end(input === undefined ? '' : typeof input === 'string' ? input : JSON.stringify(input));
  });
}

export const apply = (env, obj) => kubectl(env, ['apply', '-f', '-'], obj);

/**
 * Maps a pod created by a test to its own CRI log files (a KWOK `Logs` object named after
 * the pod, as `TestEnv::ensure_pod_logs` does) and returns the files, one per container.
 */
export async function ensurePodLogs(env, ns, pod, containers) {
  const files = containers.map((c) => path.join(env.TESTENV_LOG_DIR, ns, pod, `${c}.log`));
  fs.mkdirSync(path.join(env.TESTENV_LOG_DIR, ns, pod), { recursive: true });
  for (const f of files) fs.closeSync(fs.openSync(f, 'a'));
  await apply(env, {
    apiVersion: 'kwok.x-k8s.io/v1alpha1', kind: 'Logs', metadata: { name: pod, namespace: ns },
    spec: { logs: containers.map((c, i) => ({ containers: [c], logsFile: files[i], previousLogsFile: path.join(env.TESTENV_LOG_DIR, ns, pod, `${c}.previous.log`), follow: true })) },
  });
  return files;
}

/** A pod on the KWOK node with one container `app`. */
export function podManifest(env, ns, name, { labels = {}, owner } = {}) {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name, namespace: ns, labels, ...(owner ? { ownerReferences: [{ ...owner, controller: true }] } : {}) },
    spec: {
      nodeName: env.TESTENV_NODE_NAME,
      restartPolicy: owner?.kind === 'Job' ? 'Never' : 'Always',
      containers: [{ name: 'app', image: 'registry.invalid/kubelens/e2e:1' }],
      tolerations: [{ key: 'kwok.x-k8s.io/node', operator: 'Exists', effect: 'NoSchedule' }],
    },
  };
}

/** Waits until KWOK serves the pod's own log file (not testenv's "no Logs object" fallback). */
export async function waitLogsMapped(env, ns, pod, ms = 30_000) {
  await waitFor(`KWOK serving ${ns}/${pod}'s own log`, async () => {
    const out = await kubectl(env, ['-n', ns, 'logs', pod, '-c', 'app', '--tail=1']);
    return !out.includes('has no KWOK Logs object');
  }, ms);
}

/**
 * Forwards 127.0.0.1:<port> to `targetPort`; `cut()` destroys every connection that carried
 * data and reports how many of them were carrying an SSE stream (a `text/event-stream` answer).
 */
export function startProxy(targetPort) {
  const sockets = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream, bytes: 0, sse: false };
    sockets.add(pair);
    upstream.on('data', (d) => {
      // Keep-alive: an SSE response may follow other responses on the same connection.
      if (!pair.sse) pair.sse = /^content-type:\s*text\/event-stream/im.test(d.toString('latin1'));
      pair.bytes += d.length;
    });
    client.pipe(upstream).pipe(client);
    const drop = () => { sockets.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve({
    port: srv.address().port,
    /** Whether an open SSE stream has carried data from the server. */
    carrying: () => [...sockets].some((p) => p.sse && p.bytes > 0),
    /** Cuts every connection that carried data; returns how many SSE streams it cut. */
    cut() {
      let n = 0;
      for (const p of sockets) if (p.bytes > 0) { if (p.sse) n++; p.client.destroy(); p.upstream.destroy(); sockets.delete(p); }
      return n;
    },
    close: () => { for (const p of sockets) { p.client.destroy(); p.upstream.destroy(); } srv.close(); },
  })));
}
