// Search of the whole log (docs/logs.md "Search of the whole log"): one SSE request that scans
// every line the pod or app has, oldest first, and ends with an `end` event. Matches are listed
// with a link that opens the log at that line (`around=`). The server caps a search
// (logs.search.max_matches, max_bytes, max_duration); the page also caps what it lists, so a
// pattern that matches everything cannot freeze the tab.
import { escapeHtml, h } from './dom';
import { refusal } from './stream';
import { formatTime } from './time';

/** Matches listed on the page; the count of the rest is still shown. */
export const SHOWN_MATCHES_MAX = 1000;

export interface Match { id: string; ts: string; pod: string; container: string; instance: string; line: string; truncated: boolean; level?: string }
interface Progress { bytes: number; lines: number; matches: number; sources: number }
interface End extends Progress { reason: string; elapsedMs: number }

export interface SearchOptions {
  /** `…/pods/{name}/logs/search` or `…/apps/{name}/logs/search`. */
  path: string;
  /** The view's filters that also apply to a search (container, previous, grepExclude, level). */
  params(): URLSearchParams;
  /** Where a match opens, or null when it cannot be opened at its line. */
  link(m: Match): string | null;
  /** The pattern to start with (the view's grep). */
  initial(): string;
}

/** The line as HTML with every match of `re` in a <mark>; escaped. */
export function marked(line: string, re: RegExp | null): string {
  if (!re) return escapeHtml(line);
  let html = '', at = 0;
  for (const m of line.matchAll(re)) {
    if (m[0] === '') continue; // an empty match marks nothing
    html += escapeHtml(line.slice(at, m.index)) + `<mark>${escapeHtml(m[0])}</mark>`;
    at = m.index + m[0].length;
  }
  return html + escapeHtml(line.slice(at));
}

/**
 * Marks every match of `re` in the text of `root` (a rendered log line: ANSI colour spans,
 * field chips) with a <mark>, leaving its elements as they are. Matching runs on the text the
 * user sees, so `<`, `&` and entities behave like any other character; a match that would cross
 * an element boundary (a colour change) is not marked.
 */
export function markText(root: Element, re: RegExp | null): void {
  if (!re) return;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const texts: Text[] = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) texts.push(n as Text);
  for (const t of texts) {
    const html = marked(t.data, re);
    if (!html.includes('<mark>')) continue; // the text itself is escaped: only ours can appear
    const tpl = document.createElement('template');
    tpl.innerHTML = html;
    t.replaceWith(tpl.content);
  }
}

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/** The search panel: a pattern box, progress, and the list of matches. */
export function searchPanel(o: SearchOptions): { el: HTMLElement; open(): void; stop(): void } {
  const q = h('input', { id: 'search-q', placeholder: 'search the whole log (regex)', title: 'pattern' });
  const run = h('button', { id: 'search-run' }, 'search');
  const progress = h('span', { id: 'search-progress' });
  const results = h('ol', { id: 'search-results' });
  const el = h('section', { id: 'search', class: 'search', hidden: '' }, h('div', { class: 'toolbar' }, q, run, progress), results);
  let es: EventSource | undefined;
  let shown = 0;

  const stop = () => { es?.close(); es = undefined; run.textContent = 'search'; };
  const start = () => {
    stop();
    results.replaceChildren();
    shown = 0;
    if (!q.value) { progress.textContent = 'type a pattern'; return; }
    const params = o.params();
    params.set('q', q.value);
    const url = `${o.path}?${params}`;
    progress.textContent = 'searching…';
    run.textContent = 'stop';
    // Marks what matched; the server's regex dialect is Rust's, so a pattern JS cannot read is
    // simply not marked.
    let mark: RegExp | null = null;
    try { mark = new RegExp(q.value, 'g'); } catch { /* left unmarked */ }
    const source = new EventSource(url);
    es = source;
    const status = (p: Progress, end?: End) => {
      const more = p.matches > shown ? ` (showing the first ${shown})` : '';
      progress.textContent = `${p.matches} matches${more} in ${p.lines} lines, ${mb(p.bytes)}${end ? ` · ${end.reason === 'complete' ? 'whole log searched' : `stopped: ${end.reason}`} in ${(end.elapsedMs / 1000).toFixed(1)} s` : ' · searching…'}`;
      progress.dataset.state = end ? end.reason : 'running';
    };
    source.addEventListener('match', (e) => {
      if (shown >= SHOWN_MATCHES_MAX) return;
      const m = JSON.parse((e as MessageEvent).data) as Match;
      shown++;
      const href = o.link(m);
      const text = h('span', { class: 'text' });
      text.innerHTML = marked(m.line, mark);
      const where = h('span', { class: 'where' }, `${m.pod}/${m.container}${m.instance === 'current' ? '' : ` (${m.instance})`}`);
      const time = h('time', { datetime: m.ts }, formatTime(m.ts));
      results.append(h('li', { class: `match ${m.level ?? ''}`, 'data-id': m.id },
        href ? h('a', { href, class: 'open', title: 'open the log at this line' }, time) : time, ' ', where, ' ', text));
    });
    source.addEventListener('progress', (e) => status(JSON.parse((e as MessageEvent).data)));
    source.addEventListener('end', (e) => { const d = JSON.parse((e as MessageEvent).data) as End; stop(); status(d, d); });
    // A search is not resumable: the browser must not reconnect (it would start again).
    source.onerror = () => {
      if (es !== source) return;
      stop();
      void refusal(url).then((r) => { progress.textContent = r ? `${r.code}: ${r.message}` : 'the search was cut off; run it again'; progress.dataset.state = 'error'; });
    };
  };
  run.onclick = () => (es ? stop() : start());
  q.addEventListener('keydown', (e) => { if (e.key === 'Enter') start(); });
  return {
    el,
    open() { el.hidden = false; if (!q.value) q.value = o.initial(); q.focus(); },
    stop,
  };
}
