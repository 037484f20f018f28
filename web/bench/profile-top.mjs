// Summarises a .cpuprofile (from console.bench.mjs's BENCH_PROFILE): the functions with the
// most self time and the most total (inclusive) time, as shares of the profiled wall time.
//   node web/bench/profile-top.mjs /tmp/console.cpuprofile [N]
import fs from 'node:fs';

const [file, n = '25'] = process.argv.slice(2);
const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((node) => [node.id, node]));
const parent = new Map();
for (const node of prof.nodes) for (const c of node.children ?? []) parent.set(c, node.id);
const self = new Map();
const total = new Map();
const label = (node) => { const f = node.callFrame; return `${f.functionName || '(anonymous)'} ${f.url.split('/').pop()}:${f.lineNumber + 1}:${f.columnNumber + 1}`; };
const dts = prof.timeDeltas;
for (let i = 0; i < prof.samples.length; i++) {
  const dt = (dts[i + 1] ?? 0) / 1000; // ms until the next sample
  let node = byId.get(prof.samples[i]);
  self.set(label(node), (self.get(label(node)) ?? 0) + dt);
  const seen = new Set();
  for (let id = node.id; id !== undefined; id = parent.get(id)) {
    const l = label(byId.get(id));
    if (seen.has(l)) continue;
    seen.add(l);
    total.set(l, (total.get(l) ?? 0) + dt);
  }
}
const wall = (prof.endTime - prof.startTime) / 1000;
const top = (m) => [...m].sort((a, b) => b[1] - a[1]).slice(0, Number(n)).map(([k, v]) => `${(v / wall * 100).toFixed(1).padStart(5)}%  ${v.toFixed(0).padStart(7)} ms  ${k}`).join('\n');
console.log(`wall ${wall.toFixed(0)} ms\n--- self ---\n${top(self)}\n--- total ---\n${top(total)}`);
