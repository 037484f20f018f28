// One SSE stream with the browser's native EventSource. The stream-credential cookie makes
// its own reconnects (same URL + Last-Event-ID) authenticate, so a cut connection resumes
// with no gap and no duplicate and without any script action. Only when the browser gives
// up (a non-200 answer, e.g. 401 after the cookie expired) do we renew the cookie and open a
// new EventSource from the last id (lastEventId query parameter).
import { renewStreamCredential, token } from './api';
import type { LogLine } from './lines';

export type StreamState = 'connecting' | 'live' | 'reconnecting' | 'ended';

export interface StreamHandlers {
  onLines(lines: LogLine[]): void;
  onState(state: StreamState, reason: string): void;
  onEvent?(type: string, data: unknown): void;
}

/**
 * Lines are handed to the view together, every FLUSH_MS; after a hand-over of BUSY_BATCH lines
 * or more, the next one waits BUSY_FLUSH_MS. A stream enters that pace from ~6,700 lines/s (or
 * when a late timer makes one hand-over that big) and keeps it while it stays above 2,000 lines/s.
 * Each hand-over redraws the visible rows, so a chatty stream costs 10 redraws a second instead
 * of 33 — still faster than anyone reads. A slower pace was worse: bigger hand-overs are
 * bigger tasks (docs/benchmarks/console.md).
 */
const FLUSH_MS = 30, BUSY_FLUSH_MS = 100, BUSY_BATCH = 200;

/** Reasons after which the server-side end is final (no reconnect). */
const RESUMABLE_END = new Set(['token_expired', 'shutdown']);

export class LogStream {
  private es?: EventSource;
  private lastId = '';
  private closed = false;
  private pending: LogLine[] = [];
  private flushScheduled = false;
  /** Lines in the last hand-over to `onLines` (sets the next one's delay). */
  private lastBatch = 0;
  private failures = 0;

  constructor(private url: string, private h: StreamHandlers, private events: string[] = []) {}

  open(): void {
    const u = new URL(this.url, location.origin);
    if (this.lastId) u.searchParams.set('lastEventId', this.lastId);
    const es = new EventSource(u.toString());
    this.es = es;
    this.h.onState(this.lastId ? 'reconnecting' : 'connecting', '');
    es.onopen = () => { this.failures = 0; this.h.onState('live', ''); };
    // `log`: one line, its id is the event's. `logs` (`batch=true`, which the console asks
    // for): an array of lines with their ids, the event's id being the last one's — one
    // main-thread dispatch per write instead of one per line (docs/logs.md, SSE).
    es.addEventListener('log', (e) => {
      const m = e as MessageEvent;
      this.lastId = m.lastEventId || this.lastId;
      const d = JSON.parse(m.data) as LogLine; // a `log` event's line has its id as the event's
      d.id = m.lastEventId;
      this.pending.push(d);
      this.schedule();
    });
    es.addEventListener('logs', (e) => {
      const m = e as MessageEvent;
      this.lastId = m.lastEventId || this.lastId;
      // The parsed objects are the kept lines (no copy: 100,000 of them live on the page).
      for (const d of JSON.parse(m.data) as LogLine[]) this.pending.push(d);
      this.schedule();
    });
    es.addEventListener('status', (e) => {
      const d = JSON.parse((e as MessageEvent).data);
      if (d.state === 'ended') {
        if (!RESUMABLE_END.has(d.reason)) { this.flush(); this.stop(); this.h.onState('ended', d.reason ?? ''); }
        else this.h.onState('reconnecting', d.reason);
      } else if (d.state === 'reconnecting' || d.state === 'waiting') {
        this.h.onState('reconnecting', `${d.state}${d.reason ? ': ' + d.reason : ''}`);
      }
      this.h.onEvent?.('status', d);
    });
    es.addEventListener('lagged', () => this.h.onState('reconnecting', 'lagged'));
    for (const t of this.events) es.addEventListener(t, (e) => this.h.onEvent?.(t, JSON.parse((e as MessageEvent).data)));
    es.onerror = () => {
      if (this.closed) return;
      if (es.readyState === EventSource.CONNECTING) { this.h.onState('reconnecting', 'connection lost'); return; }
      // The browser gave up (non-200). EventSource does not say why, so ask once with fetch:
      // a request the server refuses for good (a bad query, a line that is gone: 4xx other
      // than 401/429) ends the view with the server's reason; anything else (an expired
      // cookie, overload, a restart) renews the cookie and reopens from the last id.
      es.close();
      this.failures++;
      this.h.onState('reconnecting', 'renewing credential');
      const delay = Math.min(30_000, 500 * 2 ** Math.min(this.failures, 6));
      void refusal(u.toString()).then((r) => {
        if (this.closed) return;
        if (r) { this.flush(); this.stop(); this.h.onState('ended', `${r.code}: ${r.message}`); this.h.onEvent?.('refused', r); return; }
        setTimeout(() => {
          if (this.closed) return;
          renewStreamCredential().catch(() => undefined).finally(() => { if (!this.closed) this.open(); });
        }, delay);
      });
    };
  }

  private schedule(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // A timer, not requestAnimationFrame: rAF stops in hidden tabs and lines would pile up.
    setTimeout(() => this.flush(), this.lastBatch >= BUSY_BATCH ? BUSY_FLUSH_MS : FLUSH_MS);
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.lastBatch = batch.length;
    this.h.onLines(batch);
  }

  stop(): void {
    this.closed = true;
    this.es?.close();
  }
}

/** Why the server refuses `url` for good (status 400–499 except 401 and 429), or null. */
export async function refusal(url: string): Promise<{ status: number; code: string; message: string } | null> {
  const abort = new AbortController();
  try {
    const res = await fetch(url, { headers: { Accept: 'text/event-stream', Authorization: `Bearer ${await token()}` }, signal: abort.signal });
    if (res.status < 400 || res.status >= 500 || res.status === 401 || res.status === 429) { abort.abort(); return null; }
    let code = String(res.status), message = res.statusText;
    try { const e = await res.json(); code = e.error.code; message = e.error.message; } catch { /* not JSON */ }
    return { status: res.status, code, message };
  } catch {
    return null;
  }
}
