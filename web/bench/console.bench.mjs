// Browser benchmark of the log view (issue: "a browser view that never freezes"): a pod logs
// BENCH_RATE lines/s (default 5,000) for BENCH_SECONDS (default 300) while the console follows
// it in headless Chromium; beside it, `kubectl logs -f --timestamps` follows the same pod.
// Reports: lines kept by the page (cap 100,000), JS heap over time, main-thread long tasks
// after the first second, frame times while following and while scrolling, page load → first
// line, and line timestamp → on screen (p50/p99) vs line timestamp → kubectl's stdout.
//
// Run (builds nothing; needs `cargo build -p kubelens-salvo --bin kubelens` (or KUBELENS_BIN)
// and `npm --prefix web run build`):
//   testenv/run -- node web/bench/console.bench.mjs
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { allowWebOrigins, browser, signIn, startKubelens, testenv, waitFor } from '../e2e/harness.mjs';

const RATE = Number(process.env.BENCH_RATE ?? 5000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 300);
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN; };
const tsMs = (rfc) => Date.parse(rfc.replace(/(\.\d{3})\d*Z$/, '$1Z'));
const loadavg = () => os.loadavg().map((x) => x.toFixed(2)).join(' ');

const env = testenv();
const server = await startKubelens(env);
await allowWebOrigins(env, [server.base]);
const chrome = await browser();
const ctx = await chrome.newContext({ viewport: { width: 1280, height: 800 } });
const page = await ctx.newPage();
const cdp = await ctx.newCDPSession(page);
await cdp.send('Performance.enable');
const heap = async () => (await cdp.send('Performance.getMetrics')).metrics.find((m) => m.name === 'JSHeapUsedSize').value;
await signIn(page, server.base, 'viewer', env.TESTENV_USER_VIEWER_PASSWORD);
await page.waitForSelector('#user:text("viewer")');
console.log(`load at start: ${loadavg()}`);

const file = path.join(env.TESTENV_LOG_DIR, 'team-a/debug/debug.log');
const src = `bench-${Date.now()}`;
const gen = spawn(env.TESTENV_LOGGEN, ['--file', file, '--count', String(RATE * SECONDS), '--rate', String(RATE), '--src', src, '--quiet'], { stdio: 'ignore' });
const genDone = new Promise((r) => gen.once('exit', r));

// kubectl logs -f beside it: line timestamp → stdout.
const kubectlLat = [];
const kc = spawn(env.TESTENV_KUBECTL, ['--kubeconfig', env.TESTENV_KUBECONFIG, '-n', 'team-a', 'logs', '-f', '--timestamps', '--tail=0', 'debug'], { stdio: ['ignore', 'pipe', 'ignore'] });
readline.createInterface({ input: kc.stdout }).on('line', (l) => {
  if (!l.includes(src)) return;
  kubectlLat.push(Date.now() - tsMs(l.slice(0, l.indexOf(' '))));
});

// Page load → first line on screen (signed in already; lines are flowing).
await new Promise((r) => setTimeout(r, 1000));
const t0 = Date.now();
await page.goto(`${server.base}/#/ns/team-a/pod/debug?tailLines=0`);
await page.waitForSelector('#log .line', { timeout: 30_000 });
const firstLineMs = Date.now() - t0;
await page.check('#timestamps');
// In the page: long tasks, frame times, and each row's (line timestamp → inserted) latency.
await page.evaluate(() => {
  const b = (window.kubelensBench = { longTasks: [], frames: [], rowLat: [], phase: 'follow', start: performance.now() });
  new PerformanceObserver((list) => { for (const e of list.getEntries()) if (e.startTime - b.start > 1000) b.longTasks.push(e.duration); }).observe({ type: 'longtask' });
  let last = performance.now();
  const frame = (t) => { b.frames.push([b.phase, t - last]); last = t; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  new MutationObserver((muts) => {
    const now = Date.now();
    for (const m of muts) for (const n of m.addedNodes) {
      const ts = n.querySelector?.('.ts')?.textContent;
      if (ts) b.rowLat.push(now - Date.parse(ts.replace(/(\.\d{3})\d*Z$/, '$1Z')));
    }
  }).observe(document.querySelector('#log'), { childList: true, subtree: true });
});
const heapSamples = [];
const started = Date.now();
while (Date.now() - started < SECONDS * 1000) {
  await new Promise((r) => setTimeout(r, 10_000));
  heapSamples.push([Math.round((Date.now() - started) / 1000), Math.round((await heap()) / 1048576)]);
  console.log(`t=${heapSamples.at(-1)[0]}s heap ${heapSamples.at(-1)[1]} MiB, load ${loadavg()}`);
}
// Scrolling: pause, then wheel up through the kept lines for 5 s.
await page.evaluate(() => { window.kubelensBench.phase = 'scroll'; });
// (a wheel up pauses following by itself)
await page.mouse.move(600, 400);
const scrollEnd = Date.now() + 5000;
while (Date.now() < scrollEnd) { await page.mouse.wheel(0, -600); await new Promise((r) => setTimeout(r, 16)); }
await genDone;
kc.kill('SIGTERM');
// Let the page catch up (bounded), then count what it kept.
const caughtUp = Date.now();
let view;
while (true) {
  view = await page.evaluate((tag) => { const v = window.kubelensLines(); return { kept: v.lines.length, dropped: v.dropped, mine: v.lines.filter((l) => l.includes(tag)).length }; }, src);
  if (view.mine + view.dropped >= RATE * SECONDS || Date.now() - caughtUp > 60_000) break;
  await new Promise((r) => setTimeout(r, 500));
}
view.catchUpMs = Date.now() - caughtUp;
const b = await page.evaluate(() => window.kubelensBench);
const frames = (phase) => b.frames.filter(([p]) => p === phase).map(([, d]) => d);
const f = (xs) => `p50 ${pct(xs, 50).toFixed(1)} ms, p99 ${pct(xs, 99).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms (${xs.length} frames)`;
const report = {
  rate: RATE, seconds: SECONDS, written: RATE * SECONDS, kept: view.kept, dropped: view.dropped, catchUpAfterEndMs: view.catchUpMs,
  heapMiB: heapSamples, longTasksOver50ms: b.longTasks.filter((d) => d > 50).length, longestTaskMs: Math.max(0, ...b.longTasks),
  framesFollow: f(frames('follow')), framesScroll: f(frames('scroll')), pageLoadToFirstLineMs: firstLineMs,
  latencyConsoleMs: { p50: pct(b.rowLat, 50), p99: pct(b.rowLat, 99), samples: b.rowLat.length },
  latencyKubectlMs: { p50: pct(kubectlLat, 50), p99: pct(kubectlLat, 99), samples: kubectlLat.length },
  loadAtEnd: loadavg(), cpus: os.cpus().length,
};
console.log(JSON.stringify(report, null, 2));
fs.writeFileSync(process.env.BENCH_OUT ?? '/tmp/console-bench.json', JSON.stringify(report, null, 2));
await chrome.close();
server.stop();
