// The KubeLens console: namespace picker, pods and apps with live updates, pod and app log
// views. Plain TypeScript; keycloak-js for sign-in, @tanstack/virtual-core for the log list.
import { AnsiUp } from 'ansi_up';
import { elementScroll, observeElementOffset, observeElementRect, Virtualizer } from '@tanstack/virtual-core';
import { api, ApiError, renewStreamCredential, signIn, signOut, token } from './api';
import { ArchivedList } from './archive';
import { escapeHtml, h } from './dom';
import { LineBuffer, levelOf, prettyJson, type LogLine } from './lines';
import { pinBar, pinButton, renderPins } from './pins';
import { current, loadSession, onSessionChange, refHref, setActive, setPref, update, type ResourceRef } from './session';
import { LogStream, type StreamState } from './stream';
import { applyTheme, toggleTheme } from './theme';
import { formatTime } from './time';
import './style.css';

interface Pod { name: string; uid: string; phase?: string; reason?: string; ready: boolean; readyContainers: number; totalContainers: number; restarts: number; age: number; containers: { name: string }[]; initContainers: { name: string }[]; ownerApp?: { kind: string; name: string } }
interface App { kind: string; name: string; replicasDesired: number; replicasReady: number; pods: number; podNames: string[] }
interface Me { username: string; isAdmin: boolean }
/** A stream's `status` event (docs/logs.md); `archived` carries the archive's times. */
interface Status { state: string; reason?: string; terminatedAt?: string; expiresAt?: string }

const app = document.getElementById('app')!;
const ansi = new AnsiUp();
ansi.use_classes = true; // classes, not inline styles: the CSP allows no inline style
let me: Me;
let cleanup: (() => void)[] = [];

function age(seconds: number): string {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

function header(): HTMLElement {
  const theme = h('button', { id: 'theme', title: 'toggle theme (t)' }, 'theme');
  theme.onclick = toggleTheme;
  const out = h('button', { id: 'signout' }, 'sign out');
  out.onclick = () => void signOut();
  return h('header', {}, h('a', { href: '#/' , class: 'brand' }, 'KubeLens'), pinBar(), h('span', { class: 'spacer' }), h('span', { id: 'user' }, me?.username ?? ''), theme, out);
}

// ---- screens ----
function notAllowed(): void {
  const out = h('button', { id: 'signout' }, 'sign out');
  out.onclick = () => void signOut();
  app.replaceChildren(h('main', { class: 'center', id: 'not-allowed' },
    h('h1', {}, 'Not allowed'),
    h('p', {}, 'You are signed in, but your account is not in a group allowed to use KubeLens. Ask an administrator to add you to the logs access group.'),
    out));
}

async function namespaces(): Promise<void> {
  const { body } = await api<{ name: string }[]>('/api/v1/namespaces');
  const list = h('ul', { id: 'namespaces', class: 'cards' }, ...body.map((n) => h('li', {}, h('a', { href: `#/ns/${n.name}` }, n.name))));
  app.replaceChildren(header(), h('main', {}, h('h2', {}, 'Namespaces'), list));
}

async function namespace(ns: string): Promise<void> {
  const podsBody = h('tbody');
  const appsBody = h('tbody');
  const archived = h('tbody');
  const archive = new ArchivedList(ns, archived);
  cleanup.push(() => archive.stop());
  const pods = new Map<string, Pod>();
  const renderPods = () => {
    const rows = [...pods.values()].sort((a, b) => a.name.localeCompare(b.name)).map((p) => h('tr', { 'data-pod': p.name },
      h('td', {}, h('a', { href: `#/ns/${ns}/pod/${p.name}` }, p.name)),
      h('td', { class: `phase ${p.ready ? 'ok' : 'warn'}` }, p.reason ?? p.phase ?? ''),
      h('td', {}, `${p.readyContainers}/${p.totalContainers}`),
      h('td', {}, String(p.restarts)),
      h('td', {}, age(p.age)),
      h('td', {}, h('a', { href: `#/ns/${ns}/inspect/${p.name}` }, 'inspect'))));
    podsBody.replaceChildren(...rows);
    archive.setLive([...pods.values()].map((x) => x.uid));
  };
  app.replaceChildren(header(), h('main', {},
    h('nav', { class: 'crumbs' }, h('a', { href: '#/' }, 'namespaces'), ` / ${ns} `, pinButton({ kind: 'namespace', namespace: ns })),
    h('h2', {}, 'Pods'), h('table', { id: 'pods' }, h('thead', {}, h('tr', {}, ...['name', 'status', 'ready', 'restarts', 'age', ''].map((t) => h('th', {}, t)))), podsBody),
    h('h2', {}, 'Apps'), h('table', { id: 'apps' }, h('thead', {}, h('tr', {}, ...['name', 'kind', 'ready', 'pods'].map((t) => h('th', {}, t)))), appsBody),
    h('h2', {}, 'Archived (terminated) pods'), h('table', { id: 'archived' }, h('thead', {}, h('tr', {}, ...['name', 'app', 'lines', 'readable until'].map((t) => h('th', {}, t)))), archived)));
  const [p, a] = await Promise.all([api<Pod[]>(`/api/v1/namespaces/${ns}/pods`), api<App[]>(`/api/v1/namespaces/${ns}/apps`)]);
  for (const pod of p.body) pods.set(pod.name, pod);
  renderPods();
  appsBody.replaceChildren(...a.body.map((x) => h('tr', {},
    h('td', {}, h('a', { href: `#/ns/${ns}/app/${x.name}?kind=${x.kind}` }, x.name)), h('td', {}, x.kind), h('td', {}, `${x.replicasReady}/${x.replicasDesired}`), h('td', {}, String(x.pods)))));
  void archive.refresh();
  // Live updates from pods/watch.
  const watch = new LogStream(`/api/v1/namespaces/${ns}/pods/watch`, {
    onLines: () => undefined, onState: () => undefined,
    onEvent: (type, data) => {
      const pod = data as Pod;
      if (type === 'added' || type === 'modified') pods.set(pod.name, pod);
      else if (type === 'deleted') { pods.delete(pod.name); archive.expect(pod.name); }
      else return;
      renderPods();
    },
  }, ['added', 'modified', 'deleted']);
  watch.open();
  cleanup.push(() => watch.stop());
}

async function inspect(ns: string, pod: string): Promise<void> {
  const { body: d } = await api<any>(`/api/v1/namespaces/${ns}/pods/${pod}/details`);
  const env = h('table', { id: 'env' }, ...d.containers.flatMap((c: any) => c.env.map((e: any) => h('tr', { class: e.masked ? 'masked' : '' },
    h('td', {}, c.name), h('td', {}, e.name), h('td', {}, e.value ?? (e.valueFrom ? JSON.stringify(e.valueFrom) : ''))))));
  const metrics = h('div', { id: 'metrics' }, 'loading metrics…');
  app.replaceChildren(header(), h('main', {},
    h('nav', { class: 'crumbs' }, h('a', { href: `#/ns/${ns}` }, ns), ` / ${pod} `, h('a', { href: `#/ns/${ns}/pod/${pod}` }, 'logs')),
    h('h2', {}, `Pod ${pod}`), h('p', {}, `phase ${d.phase ?? '?'} · node ${d.node ?? '?'} · QoS ${d.qosClass ?? '?'}${d.masked ? ' · secrets masked (admin only)' : ''}`),
    h('h3', {}, 'Environment'), env,
    h('h3', {}, 'Volumes'), h('ul', {}, ...d.volumes.map((v: any) => h('li', {}, `${v.name} (${v.kind}) ${v.source ?? ''}`))),
    h('h3', {}, 'Conditions'), h('ul', {}, ...d.conditions.map((c: any) => h('li', {}, `${c.type ?? c.kind ?? ''} ${c.status ?? ''}`))),
    h('h3', {}, 'Metrics'), metrics));
  api<any>(`/api/v1/namespaces/${ns}/pods/${pod}/metrics`).then(({ body }) => {
    metrics.replaceChildren(...body.containers.map((c: any) => h('div', {}, `${c.name}: cpu ${c.cpuMillicores ?? '?'}m, memory ${c.memoryBytes ?? '?'} bytes`)));
  }).catch(() => metrics.replaceChildren('metrics unavailable'));
}

// ---- log view ----
const POD_COLOURS = 8;
async function logs(ns: string, kind: 'pod' | 'app', name: string, query: URLSearchParams): Promise<void> {
  const buf = new LineBuffer();
  const podIndex = new Map<string, number>();
  let follow = true, unseen = 0;
  const prefs = { wrap: current().uiPrefs.wrap === true };
  const ref: ResourceRef = { kind, namespace: ns, name };
  const pin = pinButton(ref);
  // Shown when the pod is gone and its lines come from the archive (docs/retention.md).
  const archivedNote = h('span', { id: 'archived-note', class: 'archived-note', hidden: '' });
  const containers = h('select', { id: 'container', title: 'container' });
  const previous = h('input', { type: 'checkbox', id: 'previous' });
  const tail = h('input', { id: 'tail', type: 'number', min: '0', value: query.get('tailLines') ?? '500', title: 'tail lines' });
  const since = h('input', { id: 'since', placeholder: 'since (s)', title: 'since seconds', value: query.get('sinceSeconds') ?? '' });
  const grep = h('input', { id: 'grep', placeholder: 'grep (regex, server-side)', value: query.get('grep') ?? '' });
  const exclude = h('input', { id: 'exclude', placeholder: 'exclude (regex)', value: query.get('grepExclude') ?? '' });
  const wrap = h('input', { type: 'checkbox', id: 'wrap' }); wrap.checked = prefs.wrap;
  const stamps = h('input', { type: 'checkbox', id: 'timestamps' });
  const jsonPretty = h('input', { type: 'checkbox', id: 'json' });
  const state = h('span', { id: 'stream-state', class: 'state connecting' }, 'connecting');
  const badge = h('button', { id: 'new-lines', class: 'badge', hidden: '' }, '');
  const pause = h('button', { id: 'follow', title: 'follow / pause (space)' }, 'pause');
  const dl = h('button', { id: 'download', title: 'download the whole log' }, 'download');
  const droppedMarker = h('div', { id: 'dropped', class: 'dropped', hidden: '' });
  const scroller = h('div', { id: 'log', class: 'log', tabindex: '0' });
  const inner = h('div', { class: 'log-inner' });
  scroller.append(inner);
  const count = h('span', { id: 'count' }, '0 lines');

  if (kind === 'pod') {
    try {
      const { body: p } = await api<Pod>(`/api/v1/namespaces/${ns}/pods/${name}`);
      for (const c of [...p.containers, ...p.initContainers]) containers.append(h('option', { value: c.name }, c.name));
      if (query.get('container')) containers.value = query.get('container')!;
    } catch { containers.append(h('option', { value: '' }, '(archived)')); }
  } else containers.hidden = true;

  const regex = () => { try { return grep.value ? new RegExp(grep.value, 'g') : null; } catch { return null; } };
  let hl = regex();
  const render = (l: LogLine): string => {
    let text = l.line;
    const pretty = jsonPretty.checked ? prettyJson(text) : null;
    let html = pretty !== null ? escapeHtml(pretty) : ansi.ansi_to_html(text);
    if (hl) html = html.replace(new RegExp(`(${hl.source.replace(/&/g, '&amp;')})(?![^<]*>)`, 'g'), '<mark>$1</mark>');
    const ts = stamps.checked ? `<span class="ts">${escapeHtml(l.ts)}</span> ` : '';
    const pod = kind === 'app' && l.pod ? `<span class="pod p${podIndex.get(l.pod) ?? 0}">${escapeHtml(l.pod)}</span> ` : '';
    const trunc = l.truncated ? ' <span class="trunc">[truncated]</span>' : '';
    return `<a class="link" href="#/ns/${ns}/${kind}/${name}?since=${encodeURIComponent(l.id)}" title="link to this line">#</a>${ts}${pod}<span class="text">${html}</span>${trunc}`;
  };

  const v = new Virtualizer<HTMLDivElement, HTMLDivElement>({
    count: 0,
    getScrollElement: () => scroller,
    estimateSize: () => 18,
    overscan: 20,
    scrollToFn: elementScroll,
    observeElementRect,
    observeElementOffset,
    measureElement: (el) => el.getBoundingClientRect().height,
    onChange: () => draw(),
  });
  const rows = new Map<number, HTMLDivElement>();
  let drawn = '';
  function draw(): void {
    const items = v.getVirtualItems();
    inner.style.height = `${v.getTotalSize()}px`;
    const key = `${items[0]?.index}:${items.length}:${buf.dropped}:${buf.length}`;
    if (key === drawn && !wrap.checked) return;
    drawn = key;
    const keep = new Set<number>();
    const frag: HTMLDivElement[] = [];
    for (const it of items) {
      const idx = it.index + buf.dropped; // absolute line number: stable across drops
      keep.add(idx);
      let row = rows.get(idx);
      const l = buf.at(it.index);
      if (!l) continue;
      if (!row) {
        row = h('div', { class: `line ${levelOf(l.line)}` });
        row.dataset.seq = String(idx);
        row.innerHTML = render(l);
        rows.set(idx, row);
        frag.push(row);
      }
      row.dataset.index = String(it.index);
      row.style.transform = `translateY(${it.start}px)`;
    }
    for (const [idx, row] of rows) if (!keep.has(idx)) { row.remove(); rows.delete(idx); }
    if (frag.length) inner.append(...frag);
    if (wrap.checked) for (const row of inner.children) v.measureElement(row as HTMLDivElement);
  }
  const rerender = () => { for (const r of rows.values()) r.remove(); rows.clear(); drawn = ''; v.measure(); draw(); };
  cleanup.push(v._didMount());
  v._willUpdate();

  let stream: LogStream | undefined;
  const setState = (s: StreamState, reason: string) => {
    state.className = `state ${s}`;
    state.textContent = reason ? `${s} (${reason})` : s;
  };
  const onLines = (lines: LogLine[]) => {
    for (const l of lines) if (l.pod && !podIndex.has(l.pod)) podIndex.set(l.pod, podIndex.size % POD_COLOURS);
    buf.push(lines);
    if (!follow) { unseen += lines.length; badge.hidden = false; badge.textContent = `${unseen} new lines`; }
    droppedMarker.hidden = buf.dropped === 0;
    droppedMarker.textContent = `${buf.dropped} older lines dropped (the page keeps the last ${buf.cap}); download for the whole log`;
    count.textContent = `${buf.length} lines`;
    v.setOptions({ ...v.options, count: buf.length });
    v._willUpdate();
    if (follow) v.scrollToIndex(buf.length - 1, { align: 'end' });
    draw();
  };
  const params = (): URLSearchParams => {
    const q = new URLSearchParams();
    if (kind === 'pod' && containers.value) q.set('container', containers.value);
    if (kind === 'app' && query.get('kind')) q.set('kind', query.get('kind')!);
    if (previous.checked) q.set('previous', 'true');
    if (query.get('since')) q.set('since', query.get('since')!);
    else if (since.value) q.set('sinceSeconds', since.value);
    else q.set('tailLines', tail.value || '500');
    if (grep.value) q.set('grep', grep.value);
    if (exclude.value) q.set('grepExclude', exclude.value);
    return q;
  };
  const path = `/api/v1/namespaces/${ns}/${kind === 'pod' ? 'pods' : 'apps'}/${name}/logs`;
  // Read-only view of the kept lines for the browser tests (the DOM holds only visible rows).
  (window as unknown as { kubelensLines: () => { dropped: number; lines: string[] } }).kubelensLines = () => ({ dropped: buf.dropped, lines: buf.all().map((l) => l.line) });
  const restart = () => {
    stream?.stop();
    buf.clear(); unseen = 0; badge.hidden = true; hl = regex(); rerender();
    archivedNote.hidden = true;
    stream = new LogStream(`${path}?${params()}`, { onLines, onState: setState, onEvent: (type, d) => { if (type === 'status') onStatus(d as Status); } });
    stream.open();
  };
  const onStatus = (d: Status) => {
    if (d.state !== 'archived') return;
    const kids: (Node | string)[] = [`archived: pod ${d.reason === 'pod_deleted' ? 'deleted' : 'gone'}`];
    if (d.terminatedAt) kids.push(' ', h('time', { class: 'terminated', datetime: d.terminatedAt }, formatTime(d.terminatedAt)));
    if (d.expiresAt) kids.push(' · readable until ', h('time', { class: 'expires', datetime: d.expiresAt }, formatTime(d.expiresAt)));
    archivedNote.replaceChildren(...kids);
    archivedNote.hidden = false;
  };
  const setFollow = (on: boolean) => {
    follow = on; pause.textContent = on ? 'pause' : 'follow';
    if (on) { unseen = 0; badge.hidden = true; v.scrollToIndex(buf.length - 1, { align: 'end' }); }
  };
  pause.onclick = () => setFollow(!follow);
  badge.onclick = () => setFollow(true);
  scroller.addEventListener('wheel', (e) => { if (e.deltaY < 0 && follow) setFollow(false); });
  for (const el of [containers, previous, tail, since, grep, exclude]) el.addEventListener('change', restart);
  wrap.onchange = () => { scroller.classList.toggle('wrap', wrap.checked); rerender(); void update(setPref('wrap', wrap.checked)); };
  stamps.onchange = rerender;
  jsonPretty.onchange = rerender;
  dl.onclick = async () => {
    const q = params(); q.set('follow', 'false'); q.set('download', 'true'); q.delete('tailLines');
    const res = await fetch(`${path}?${q}`, { headers: { Authorization: `Bearer ${await token()}` } });
    const a = h('a', { href: URL.createObjectURL(await res.blob()), download: `${ns}-${name}.log` });
    a.click();
  };
  const keys = (e: KeyboardEvent) => {
    if ((e.target as HTMLElement).tagName === 'INPUT') return;
    if (e.key === ' ') { e.preventDefault(); setFollow(!follow); }
    else if (e.key === 'w') { wrap.checked = !wrap.checked; wrap.dispatchEvent(new Event('change')); }
    else if (e.key === '/') { e.preventDefault(); grep.focus(); }
    else if (e.key === 't') toggleTheme();
    else if (e.key === 'p') pin.click();
  };
  document.addEventListener('keydown', keys);
  cleanup.push(() => document.removeEventListener('keydown', keys), () => stream?.stop());
  const label = (el: HTMLElement, text: string) => h('label', {}, el, text);
  scroller.classList.toggle('wrap', wrap.checked);
  app.replaceChildren(header(), h('main', { class: 'logview' },
    h('nav', { class: 'crumbs' }, h('a', { href: `#/ns/${ns}` }, ns), ` / ${kind} ${name} `, pin, ' ', state, ' ', count, ' ', archivedNote),
    h('div', { class: 'toolbar' }, containers, label(previous, 'previous'), tail, since, grep, exclude, label(wrap, 'wrap'), label(stamps, 'timestamps'), label(jsonPretty, 'JSON'), pause, dl, badge),
    droppedMarker, scroller));
  restart();
}

// ---- routing ----
async function route(): Promise<void> {
  for (const c of cleanup.splice(0)) c();
  const [pathPart, qs] = location.hash.replace(/^#/, '').split('?');
  const q = new URLSearchParams(qs ?? '');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === 'ns' && parts[1] && parts[2] === 'pod' && parts[3]) await logs(parts[1], 'pod', parts[3], q);
    else if (parts[0] === 'ns' && parts[1] && parts[2] === 'app' && parts[3]) await logs(parts[1], 'app', parts[3], q);
    else if (parts[0] === 'ns' && parts[1] && parts[2] === 'inspect' && parts[3]) await inspect(parts[1], parts[3]);
    else if (parts[0] === 'ns' && parts[1]) await namespace(parts[1]);
    else await namespaces();
    if (parts[0] === 'ns') void update(setActive(parts[3] ? { kind: parts[2] === 'app' ? 'app' : 'pod', namespace: parts[1], name: parts[3] } : { kind: 'namespace', namespace: parts[1] }));
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return notAllowed();
    app.replaceChildren(header(), h('main', {}, h('p', { class: 'error', id: 'error' }, e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e))));
  }
}

async function start(): Promise<void> {
  await signIn();
  try {
    me = (await api<Me>('/api/v1/me')).body;
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return notAllowed();
    throw e;
  }
  await renewStreamCredential();
  onSessionChange((doc) => { applyTheme(doc.theme); renderPins(doc); });
  const doc = await loadSession();
  // Restore the last open resource after a reload or in another browser.
  if (!location.hash || location.hash === '#/') {
    const r = doc.activeResources[0];
    if (r) location.hash = refHref(r);
  }
  window.addEventListener('hashchange', () => void route());
  await route();
}

void start();
