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
// BENCH_RATE, BENCH_SECONDS, BENCH_OUT (the JSON report), BENCH_PROFILE (a .cpuprofile of
// the following phase) and BENCH_BROWSER_CPU (below) change what it does. The browser on a
// core of its own:
//   taskset -c 0 testenv/run -- env BENCH_BROWSER_CPU=1 node web/bench/console.bench.mjs
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

// BENCH_BROWSER_CPU=1: Chromium runs on that CPU alone (run the rest with `taskset -c 0`), as
// a browser on a user's machine does not share its cores with the cluster, the log writer,
// kubelens and kubectl. Without it everything shares the machine's cores.
if (process.env.BENCH_BROWSER_CPU) {
  const wrapper = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bench-chromium-')), 'chromium');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec taskset -c ${Number(process.env.BENCH_BROWSER_CPU)} ${process.env.CHROMIUM ?? '/usr/bin/chromium'} "$@"\n`, { mode: 0o755 });
  process.env.CHROMIUM = wrapper;
}
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
// The page opened with tailLines=0 after loggen had started: its lines begin at this seq.
const seqOf = (line) => Number(/\bseq=(\d+)\b/.exec(line)?.[1]);
const firstSeq = await page.evaluate((tag) => window.kubelensLines().lines.find((l) => l.includes(tag)), src).then(seqOf);
await page.check('#timestamps');
// In the page: long tasks, frame times, and each row's (line timestamp → inserted) latency.
await page.evaluate(() => {
  const b = (window.kubelensBench = { longTasks: [], frames: [], rowLat: [], phase: 'follow', start: performance.now() });
  new PerformanceObserver((list) => { for (const e of list.getEntries()) if (e.startTime - b.start > 1000) b.longTasks.push([Math.round((e.startTime - b.start) / 100) / 10, Math.round(e.duration)]); }).observe({ type: 'longtask' });
  let last = performance.now();
  const frame = (t) => { b.frames.push([b.phase, t - last]); last = t; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  new MutationObserver((muts) => {
    // Only while following: rows drawn while scrolling back hold old lines.
    if (b.phase !== 'follow') return;
    const now = Date.now();
    for (const m of muts) for (const n of m.addedNodes) {
      const ts = n.querySelector?.('.ts')?.textContent;
      if (ts) b.rowLat.push(now - Date.parse(ts.replace(/(\.\d{3})\d*Z$/, '$1Z')));
    }
  }).observe(document.querySelector('#log'), { childList: true, subtree: true });
});
// BENCH_PROFILE=file.cpuprofile: a CPU profile of the page's main thread while following
// (open it in Chrome DevTools' Performance panel, or summarise it with web/bench/profile-top.mjs).
const PROFILE = process.env.BENCH_PROFILE;
if (PROFILE) { await cdp.send('Profiler.enable'); await cdp.send('Profiler.setSamplingInterval', { interval: 200 }); await cdp.send('Profiler.start'); }
const heapSamples = [];
const started = Date.now();
while (Date.now() - started < SECONDS * 1000) {
  await new Promise((r) => setTimeout(r, 10_000));
  heapSamples.push([Math.round((Date.now() - started) / 1000), Math.round((await heap()) / 1048576)]);
  // Lines the page has taken in so far (kept + dropped), from what it shows the user.
  const taken = await page.evaluate(() => parseInt(document.querySelector('#count').textContent, 10) + (parseInt(document.querySelector('#dropped').textContent, 10) || 0));
  console.log(`t=${heapSamples.at(-1)[0]}s heap ${heapSamples.at(-1)[1]} MiB, page has taken in ${taken} lines, kubectl ${kubectlLat.length}, load ${loadavg()}`);
}
if (PROFILE) fs.writeFileSync(PROFILE, JSON.stringify((await cdp.send('Profiler.stop')).profile));
// Scrolling: pause, then wheel up through the kept lines for 5 s.
await page.evaluate(() => { window.kubelensBench.phase = 'scroll'; });
// (a wheel up pauses following by itself)
await page.mouse.move(600, 400);
const scrollEnd = Date.now() + 5000;
while (Date.now() < scrollEnd) { await page.mouse.wheel(0, -600); await new Promise((r) => setTimeout(r, 16)); }
await genDone;
kc.kill('SIGTERM');
// Let the page catch up to the last line (bounded), then count what it kept: from its first
// line on it must hold every seq once (kept + dropped = last - first + 1, in order).
const caughtUp = Date.now();
const lastSeq = RATE * SECONDS;
let view;
while (true) {
  view = await page.evaluate((tag) => {
    const v = window.kubelensLines();
    const seqs = v.lines.filter((l) => l.includes(tag)).map((l) => Number(/\bseq=(\d+)\b/.exec(l)[1]));
    const others = v.lines.filter((l) => !l.includes(tag));
    return { kept: v.lines.length, dropped: v.dropped, others: others.length, otherSample: others.slice(0, 3), last: seqs.at(-1) ?? 0, inOrder: seqs.every((q, i) => i === 0 || q - seqs[i - 1] === 1) };
  }, src);
  if (view.last >= lastSeq || Date.now() - caughtUp > 60_000) break;
  await new Promise((r) => setTimeout(r, 500));
}
view.catchUpMs = Date.now() - caughtUp;
view.exact = view.inOrder && view.last === lastSeq && view.kept + view.dropped - view.others === lastSeq - firstSeq + 1;
if (view.others) console.log(`${view.others} kept lines are not loggen's, e.g. ${JSON.stringify(view.otherSample)}`);
const b = await page.evaluate(() => window.kubelensBench);
const frames = (phase) => b.frames.filter(([p]) => p === phase).map(([, d]) => d);
const f = (xs) => `p50 ${pct(xs, 50).toFixed(1)} ms, p99 ${pct(xs, 99).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms (${xs.length} frames)`;
const report = {
  rate: RATE, seconds: SECONDS, written: RATE * SECONDS, firstSeqOnPage: firstSeq, kept: view.kept, dropped: view.dropped, everyLineOnceInOrder: view.exact, catchUpAfterEndMs: view.catchUpMs,
  heapMiB: heapSamples, longTasksOver50ms: b.longTasks.filter(([, d]) => d > 50).length, longestTaskMs: Math.max(0, ...b.longTasks.map(([, d]) => d)),
  longTasks: b.longTasks.filter(([, d]) => d > 50).map(([t, d]) => `${d} ms at ${t} s`),
  framesFollow: f(frames('follow')), framesScroll: f(frames('scroll')), pageLoadToFirstLineMs: firstLineMs,
  latencyConsoleMs: { p50: pct(b.rowLat, 50), p99: pct(b.rowLat, 99), samples: b.rowLat.length },
  latencyKubectlMs: { p50: pct(kubectlLat, 50), p99: pct(kubectlLat, 99), samples: kubectlLat.length },
  loadAtEnd: loadavg(), cpus: os.cpus().length, browserCpu: process.env.BENCH_BROWSER_CPU ?? 'shared',
};
console.log(JSON.stringify(report, null, 2));
fs.writeFileSync(process.env.BENCH_OUT ?? '/tmp/console-bench.json', JSON.stringify(report, null, 2));
await chrome.close();
server.stop();
