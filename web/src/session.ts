// The per-user UI session (GET/PUT /api/v1/session, docs/storage.md): open resource, pinned
// resources, theme and view preferences, restored after a reload and in another browser.
//
// Every change is a function of the document, not a patch: writes are queued (one PUT in
// flight per page, each with the ETag of the last answer in If-Match), and when another tab
// or browser wrote in between (412) the stored document is read again and the same change
// re-applied to it — so a pin added there is not overwritten by a theme toggled here.
import { api, ApiError } from './api';

export type Theme = 'system' | 'light' | 'dark';
export type ResourceKind = 'pod' | 'app' | 'namespace';
export interface ResourceRef { kind: ResourceKind; namespace: string; name?: string; container?: string }
export type PrefValue = boolean | number | string;
export interface SessionDoc {
  activeResources: ResourceRef[];
  pinnedResources: ResourceRef[];
  theme: Theme;
  uiPrefs: Record<string, PrefValue>;
}
export type Change = (doc: SessionDoc) => SessionDoc;

export const DEFAULT_SESSION: SessionDoc = { activeResources: [], pinnedResources: [], theme: 'system', uiPrefs: {} };

/** Whether the page's changes are stored: shown as `data-session` on the root element. */
export type SaveState = 'saved' | 'saving' | 'unavailable';

let stored: SessionDoc = DEFAULT_SESSION; // the server's document as last read or written
let etag: string | null = null;
let pending: Change[] = []; // applied locally, not yet acknowledged by the server
let queue: Promise<void> = Promise.resolve();
const listeners: ((doc: SessionDoc) => void)[] = [];

function normalize(body: Partial<SessionDoc> | undefined): SessionDoc {
  return { ...DEFAULT_SESSION, ...(body ?? {}) };
}

/** The document as this page sees it: the stored one with the pending changes applied. */
export function current(): SessionDoc {
  return pending.reduce((d, c) => c(d), stored);
}

/** Called with the current document after every load, change and server answer. */
export function onSessionChange(fn: (doc: SessionDoc) => void): void {
  listeners.push(fn);
}

function notify(): void {
  const doc = current();
  for (const fn of listeners) fn(doc);
}

function setSaveState(s: SaveState): void {
  document.documentElement.dataset.session = s;
}

async function read(): Promise<void> {
  const { body, res } = await api<SessionDoc>('/api/v1/session');
  stored = normalize(body);
  etag = res.headers.get('etag');
}

/** Reads the stored session (the default document when there is none or storage is down). */
export async function loadSession(): Promise<SessionDoc> {
  try {
    await read();
    setSaveState('saved');
  } catch {
    setSaveState('unavailable');
  }
  notify();
  return current();
}

async function put(change: Change): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (etag) headers['if-match'] = etag; else headers['if-none-match'] = '*';
    try {
      const { body, res } = await api<SessionDoc>('/api/v1/session', { method: 'PUT', headers, body: JSON.stringify(change(stored)) });
      stored = normalize(body);
      etag = res.headers.get('etag');
      return;
    } catch (e) {
      // Someone else wrote since our last read: re-read and re-apply this change to theirs.
      if (e instanceof ApiError && e.status === 412 && attempt < 5) { await read(); continue; }
      throw e;
    }
  }
}

/** Applies `change` at once and stores it (queued behind earlier changes of this page). */
export function update(change: Change): Promise<void> {
  pending.push(change);
  setSaveState('saving');
  notify();
  const run = async () => {
    try {
      await put(change);
    } catch {
      setSaveState('unavailable');
    } finally {
      pending = pending.filter((c) => c !== change);
      if (pending.length === 0 && document.documentElement.dataset.session === 'saving') setSaveState('saved');
      notify();
    }
  };
  queue = queue.then(run);
  return queue;
}

export function sameRef(a: ResourceRef, b: ResourceRef): boolean {
  return a.kind === b.kind && a.namespace === b.namespace && (a.name ?? '') === (b.name ?? '');
}

/** The console route of a resource. */
export function refHref(r: ResourceRef): string {
  const ns = encodeURIComponent(r.namespace);
  return r.kind === 'namespace' ? `#/ns/${ns}` : `#/ns/${ns}/${r.kind}/${encodeURIComponent(r.name ?? '')}`;
}

export function refLabel(r: ResourceRef): string {
  return r.kind === 'namespace' ? r.namespace : `${r.kind} ${r.namespace}/${r.name}`;
}

// ---- changes ----

export const setTheme = (theme: Theme): Change => (d) => ({ ...d, theme });
export const setPref = (key: string, value: PrefValue): Change => (d) => ({ ...d, uiPrefs: { ...d.uiPrefs, [key]: value } });
export const setActive = (r: ResourceRef): Change => (d) => ({ ...d, activeResources: [r] });
/** Pins `r` when `on`, unpins it otherwise (idempotent, so a re-applied change is harmless). */
export const setPinned = (r: ResourceRef, on: boolean): Change => (d) => {
  const rest = d.pinnedResources.filter((p) => !sameRef(p, r));
  return { ...d, pinnedResources: on ? [...rest, r].slice(-100) : rest };
};
