// The log view of a pod or an app: a virtualized list of at most 100,000 lines fed by one SSE
// stream, with follow/pause, filters (server-side grep/exclude/level), JSON shown raw, pretty
// or as fields, a link on every line that opens the log at that line (`around=`), pods of an
// app switched on and off, whole-log search and download.
import { AnsiUp } from 'ansi_up';
import { elementScroll, observeElementOffset, observeElementRect, Virtualizer } from '@tanstack/virtual-core';
import { api, token } from './api';
import { escapeHtml, h } from './dom';
import { fieldsHtml, LineBuffer, lineLevel, PodFilter, prettyJson, type LogLine } from './lines';
import { pinButton } from './pins';
import { markText, searchPanel, type Match } from './search';
import { current, setPref, update, type ResourceRef } from './session';
import { LogStream, type StreamState } from './stream';
import { toggleTheme } from './theme';
import { formatTime } from './time';

/** A stream's `status` event (docs/logs.md); `archived` carries the archive's times. */
interface Status { state: string; reason?: string; terminatedAt?: string; expiresAt?: string }
interface PodInfo { containers: { name: string }[]; initContainers: { name: string }[] }

const POD_COLOURS = 8;
/** Lines read before the line a link opens at (the server allows up to 1,000); the read then goes on live. */
export const AROUND_CONTEXT = 200;
const LEVELS = ['', 'trace', 'debug', 'info', 'warn', 'error', 'fatal'];

const ansi = new AnsiUp();
ansi.use_classes = true; // classes, not inline styles: the CSP allows no inline style

/** Renders the log view into `app`; returns when the view is built and its stream opened. */
export async function logView(app: HTMLElement, header: () => HTMLElement, cleanup: (() => void)[], ns: string, kind: 'pod' | 'app', name: string, query: URLSearchParams): Promise<void> {
  const buf = new LineBuffer();
  const pods = new PodFilter(buf);
  const podIndex = new Map<string, number>();
  // The line a link opened the view at: marked, scrolled to, and the view paused on it.
  let around = query.get('around');
  let follow = !around, unseen = 0;
  const prefs = { wrap: current().uiPrefs.wrap === true };
  const ref: ResourceRef = { kind, namespace: ns, name };
  const pin = pinButton(ref);
  // Shown when the pod is gone and its lines come from the archive (docs/retention.md).
  const archivedNote = h('span', { id: 'archived-note', class: 'archived-note', hidden: '' });
  const containers = h('select', { id: 'container', title: 'container' });
  const previous = h('input', { type: 'checkbox', id: 'previous' });
  previous.checked = query.get('previous') === 'true';
  const tail = h('input', { id: 'tail', type: 'number', min: '0', value: query.get('tailLines') ?? '500', title: 'tail lines' });
  const since = h('input', { id: 'since', placeholder: 'since (s)', title: 'since seconds', value: query.get('sinceSeconds') ?? '' });
  const grep = h('input', { id: 'grep', placeholder: 'grep (regex, server-side)', value: query.get('grep') ?? '' });
  const exclude = h('input', { id: 'exclude', placeholder: 'exclude (regex)', value: query.get('grepExclude') ?? '' });
  const level = h('select', { id: 'level', title: 'lowest level shown (server-side)' }, ...LEVELS.map((l) => h('option', { value: l }, l ? `${l}+` : 'any level')));
  level.value = query.get('level') ?? '';
  const wrap = h('input', { type: 'checkbox', id: 'wrap' }); wrap.checked = prefs.wrap;
  const stamps = h('input', { type: 'checkbox', id: 'timestamps' });
  const json = h('select', { id: 'json', title: 'JSON and logfmt lines' }, h('option', { value: 'raw' }, 'raw'), h('option', { value: 'pretty' }, 'JSON pretty'), h('option', { value: 'fields' }, 'as fields'));
  const state = h('span', { id: 'stream-state', class: 'state connecting' }, 'connecting');
  const badge = h('button', { id: 'new-lines', class: 'badge', hidden: '' }, '');
  const pause = h('button', { id: 'follow', title: 'follow / pause (space)' }, follow ? 'pause' : 'follow');
  const dl = h('button', { id: 'download', title: 'download the whole log' }, 'download');
  const searchOpen = h('button', { id: 'search-open', title: 'search the whole log (s)' }, 'search');
  const toggles = h('div', { id: 'pod-toggles', class: 'toggles', hidden: '' });
  const droppedMarker = h('div', { id: 'dropped', class: 'dropped', hidden: '' });
  const scroller = h('div', { id: 'log', class: 'log', tabindex: '0' });
  const inner = h('div', { class: 'log-inner' });
  scroller.append(inner);
  const count = h('span', { id: 'count' }, '0 lines');

  let podExists = kind === 'app';
  if (kind === 'pod') {
    try {
      const { body: p } = await api<PodInfo>(`/api/v1/namespaces/${ns}/pods/${name}`);
      podExists = true;
      for (const c of [...p.containers, ...p.initContainers]) containers.append(h('option', { value: c.name }, c.name));
      if (query.get('container')) containers.value = query.get('container')!;
    } catch { containers.append(h('option', { value: '' }, '(archived)')); }
  } else containers.hidden = true;

  // A link to a line keeps what selects the instance and the lines (container, previous, the
  // app's kind); filters are left out so the line opens among its neighbours.
  const lineHref = (id: string, at: { pod: string; container: string; previous: boolean } | null = null): string => {
    const q = new URLSearchParams();
    if (!at && kind === 'app' && query.get('kind')) q.set('kind', query.get('kind')!);
    const container = at ? at.container : kind === 'pod' ? containers.value : '';
    if (container) q.set('container', container);
    if (at ? at.previous : previous.checked) q.set('previous', 'true');
    q.set('around', id);
    return at ? `#/ns/${ns}/pod/${at.pod}?${q}` : `#/ns/${ns}/${kind}/${name}?${q}`;
  };
  const regex = () => { try { return grep.value ? new RegExp(grep.value, 'g') : null; } catch { return null; } };
  let hl = regex();
  const render = (l: LogLine): string => {
    let html: string;
    if (json.value === 'fields' && l.fields) html = fieldsHtml(l.fields);
    else {
      const pretty = json.value === 'pretty' ? prettyJson(l.line) : null;
      html = pretty !== null ? escapeHtml(pretty) : ansi.ansi_to_html(l.line);
    }
    const ts = stamps.checked ? `<span class="ts">${escapeHtml(l.ts)}</span> ` : '';
    const pod = kind === 'app' && l.pod ? `<span class="pod p${podIndex.get(l.pod) ?? 0}">${escapeHtml(l.pod)}</span> ` : '';
    const trunc = l.truncated ? ' <span class="trunc">[truncated]</span>' : '';
    const href = lineHref(l.id);
    return `<a class="link" href="${escapeHtml(href)}" title="link to this line">#</a>${ts}${pod}<span class="text">${html}</span>${trunc}`;
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
    const shown = pods.view();
    const items = v.getVirtualItems();
    inner.style.height = `${v.getTotalSize()}px`;
    const key = `${items[0]?.index}:${items.length}:${shown.dropped}:${shown.length}`;
    if (key === drawn && !wrap.checked) return;
    drawn = key;
    const keep = new Set<number>();
    const frag: HTMLDivElement[] = [];
    for (const it of items) {
      const idx = it.index + shown.dropped; // absolute line number: stable across drops
      keep.add(idx);
      let row = rows.get(idx);
      const l = shown.at(it.index);
      if (!l) continue;
      if (!row) {
        row = h('div', { class: `line ${lineLevel(l)}${l.id === around ? ' target' : ''}` });
        row.dataset.seq = String(idx);
        row.dataset.id = l.id;
        row.innerHTML = render(l);
        markText(row.querySelector('.text')!, hl);
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
  const rerender = () => {
    for (const r of rows.values()) r.remove();
    rows.clear(); drawn = '';
    v.setOptions({ ...v.options, count: pods.view().length });
    v.measure(); draw();
  };
  cleanup.push(v._didMount());
  v._willUpdate();

  let stream: LogStream | undefined;
  const setState = (s: StreamState, reason: string) => {
    state.className = `state ${s}`;
    state.textContent = reason ? `${s} (${reason})` : s;
  };
  const podToggle = (pod: string) => {
    const b = h('button', { class: `pod p${podIndex.get(pod)}`, 'data-pod': pod, title: `show or hide ${pod}'s lines` }, pod);
    b.onclick = () => { pods.toggle(pod); b.classList.toggle('off', pods.hidden.has(pod)); rerender(); };
    toggles.append(b);
    toggles.hidden = false;
  };
  const onLines = (lines: LogLine[]) => {
    for (const l of lines) if (l.pod && kind === 'app' && !podIndex.has(l.pod)) { podIndex.set(l.pod, podIndex.size % POD_COLOURS); podToggle(l.pod); }
    buf.push(lines);
    pods.push(lines);
    const shown = pods.view();
    if (!follow) { unseen += lines.length; badge.hidden = false; badge.textContent = `${unseen} new lines`; }
    droppedMarker.hidden = buf.dropped === 0;
    droppedMarker.textContent = `${buf.dropped} older lines dropped (the page keeps the last ${buf.cap}); download for the whole log`;
    count.textContent = `${buf.length} lines`;
    v.setOptions({ ...v.options, count: shown.length });
    v._willUpdate();
    const target = around ? shown.lastIndexOf(around, lines.length) : -1;
    if (target >= 0) { unseen = 0; badge.hidden = true; v.scrollToIndex(target, { align: 'center' }); draw(); }
    else if (follow) followEnd();
    else draw();
  };
  // Keeps the newest line in view with a plain scrollTop write, not the virtualizer's
  // scrollToIndex: that one re-reads the layout (scrollHeight) every frame until it settles,
  // and with lines arriving every 30-100 ms it never does. The scroll event redraws (onChange);
  // when the end did not move (at the cap the height stays while lines shift) we redraw here.
  const followEnd = () => {
    const total = v.getTotalSize();
    inner.style.height = `${total}px`;
    const before = v.scrollOffset;
    scroller.scrollTop = Math.max(0, total - scroller.clientHeight);
    if (scroller.scrollTop === before) draw();
  };
  const filters = (q: URLSearchParams) => {
    if (exclude.value) q.set('grepExclude', exclude.value);
    if (level.value) q.set('level', level.value);
    return q;
  };
  const instance = (q: URLSearchParams) => {
    if (kind === 'pod' && containers.value) q.set('container', containers.value);
    if (kind === 'app' && query.get('kind')) q.set('kind', query.get('kind')!);
    if (previous.checked) q.set('previous', 'true');
    return q;
  };
  const params = (): URLSearchParams => {
    const q = instance(new URLSearchParams());
    // A live read from the line on: its `before` lines, the line, then every line after it.
    if (around) { q.set('around', around); q.set('before', String(AROUND_CONTEXT)); q.set('follow', 'true'); }
    else if (since.value) q.set('sinceSeconds', since.value);
    else q.set('tailLines', tail.value || '500');
    if (grep.value) q.set('grep', grep.value);
    if (json.value === 'fields') q.set('fields', 'true');
    q.set('batch', 'true'); // several lines per SSE event (stream.ts)
    return filters(q);
  };
  const path = `/api/v1/namespaces/${ns}/${kind === 'pod' ? 'pods' : 'apps'}/${name}/logs`;
  // Read-only view of the kept lines for the browser tests (the DOM holds only visible rows).
  (window as unknown as { kubelensLines: () => { dropped: number; lines: string[]; ids: string[] } }).kubelensLines = () => ({ dropped: buf.dropped, lines: buf.all().map((l) => l.line), ids: buf.all().map((l) => l.id) });
  const restart = () => {
    stream?.stop();
    buf.clear(); pods.clear(); unseen = 0; badge.hidden = true; hl = regex(); rerender();
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
    if (on) { unseen = 0; badge.hidden = true; followEnd(); }
  };
  pause.onclick = () => setFollow(!follow);
  badge.onclick = () => setFollow(true);
  scroller.addEventListener('wheel', (e) => { if (e.deltaY < 0 && follow) setFollow(false); });
  // Choosing how many lines to read drops the line the view was opened at.
  for (const el of [tail, since]) el.addEventListener('change', () => { around = null; setFollow(true); });
  for (const el of [containers, previous, tail, since, grep, exclude, level]) el.addEventListener('change', restart);
  wrap.onchange = () => { scroller.classList.toggle('wrap', wrap.checked); rerender(); void update(setPref('wrap', wrap.checked)); };
  stamps.onchange = rerender;
  let jsonWas = json.value;
  // Fields come from the server (`fields=true`): switching to or from them re-reads the lines.
  json.onchange = () => { if ((jsonWas === 'fields') !== (json.value === 'fields')) restart(); else rerender(); jsonWas = json.value; };
  dl.onclick = async () => {
    const q = filters(instance(new URLSearchParams()));
    if (grep.value) q.set('grep', grep.value);
    q.set('download', 'true');
    const res = await fetch(`${path}?${q}`, { headers: { Authorization: `Bearer ${await token()}` } });
    const a = h('a', { href: URL.createObjectURL(await res.blob()), download: `${ns}-${name}.log` });
    a.click();
  };
  const search = searchPanel({
    path: `${path}/search`,
    params: () => filters(kind === 'pod' ? instance(new URLSearchParams()) : new URLSearchParams()),
    // An app's match carries its pod's line id: it opens in that pod's log. A match in an
    // archived instance of a pod that still runs has no live read to open in.
    link: (m: Match) => (m.instance === 'archived' && podExists ? null : lineHref(m.id, { pod: m.pod, container: m.container, previous: m.instance === 'previous' })),
    initial: () => grep.value,
  });
  searchOpen.onclick = () => search.open();
  const keys = (e: KeyboardEvent) => {
    if ((e.target as HTMLElement).tagName === 'INPUT') return;
    if (e.key === ' ') { e.preventDefault(); setFollow(!follow); }
    else if (e.key === 'w') { wrap.checked = !wrap.checked; wrap.dispatchEvent(new Event('change')); }
    else if (e.key === '/') { e.preventDefault(); grep.focus(); }
    else if (e.key === 's') { e.preventDefault(); search.open(); }
    else if (e.key === 't') toggleTheme();
    else if (e.key === 'p') pin.click();
  };
  document.addEventListener('keydown', keys);
  cleanup.push(() => document.removeEventListener('keydown', keys), () => stream?.stop(), () => search.stop());
  const label = (el: HTMLElement, text: string) => h('label', {}, el, text);
  scroller.classList.toggle('wrap', wrap.checked);
  app.replaceChildren(header(), h('main', { class: 'logview' },
    h('nav', { class: 'crumbs' }, h('a', { href: `#/ns/${ns}` }, ns), ` / ${kind} ${name} `, pin, ' ', state, ' ', count, ' ', archivedNote),
    h('div', { class: 'toolbar' }, containers, label(previous, 'previous'), tail, since, grep, exclude, level, label(wrap, 'wrap'), label(stamps, 'timestamps'), json, pause, dl, searchOpen, badge),
    search.el, toggles, droppedMarker, scroller));
  restart();
}
