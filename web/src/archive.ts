// The namespace screen's "Archived (terminated) pods" table: pods deleted from the cluster
// whose logs KubeLens keeps until `expiresAt` (GET /api/v1/namespaces/{ns}/archived-pods,
// docs/retention.md). Read when the screen opens and again whenever pods/watch reports a
// deletion (the archive marks a pod terminated just after it is gone, so the list is
// re-read with back-off until the deleted pod shows up, at most ~30 s). Sources of a pod that
// still exists (same uid: a crash-looping container's previous instances) are left out: they
// are read from the live pod's view with "previous".
import { api } from './api';
import { h } from './dom';
import { formatTime } from './time';

export interface ArchivedPod {
  name: string;
  uid: string;
  appKind?: string;
  appName?: string;
  terminated: boolean;
  terminatedAt?: string;
  expiresAt?: string;
  containers: { name: string; instances: number; lines: number; bytes: number }[];
}

const RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000];

export class ArchivedList {
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private stopped = false;
  private items: ArchivedPod[] = [];
  private live = new Set<string>();
  private loaded = false; // nothing is rendered before the first read

  constructor(private ns: string, private body: HTMLTableSectionElement) {}

  /** Reads the list and renders the terminated pods; returns them. */
  async refresh(): Promise<ArchivedPod[]> {
    try {
      const { body } = await api<{ items: ArchivedPod[] }>(`/api/v1/namespaces/${encodeURIComponent(this.ns)}/archived-pods`);
      this.items = body.items.filter((x) => x.terminated);
      this.loaded = true;
      if (!this.stopped) this.render();
      return this.items;
    } catch {
      if (!this.stopped) this.body.replaceChildren(h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'archive unavailable')));
      return [];
    }
  }

  /** The uids of the pods that exist now (their archived sources are not listed). */
  setLive(uids: Iterable<string>): void {
    this.live = new Set(uids);
    if (!this.stopped && this.loaded) this.render();
  }

  /** A pod was deleted: re-read until it is listed (or the retries run out). */
  expect(pod: string): void {
    let attempt = 0;
    const next = () => {
      if (this.stopped || attempt >= RETRY_MS.length) return;
      const t = setTimeout(async () => {
        this.timers.delete(t);
        const items = await this.refresh();
        attempt++;
        if (!items.some((x) => x.name === pod)) next();
      }, RETRY_MS[attempt]);
      this.timers.add(t);
    };
    next();
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  private render(): void {
    const ns = encodeURIComponent(this.ns);
    const rows = this.items
      .filter((x) => !this.live.has(x.uid))
      .sort((a, b) => (b.terminatedAt ?? '').localeCompare(a.terminatedAt ?? ''))
      .map((x) => h('tr', { 'data-archived': x.name },
        h('td', {}, h('a', { href: `#/ns/${ns}/pod/${encodeURIComponent(x.name)}` }, x.name)),
        h('td', {}, x.appKind && x.appName ? `${x.appKind} ${x.appName}` : ''),
        h('td', {}, String(x.containers.reduce((n, c) => n + c.lines, 0))),
        h('td', { class: 'expires' }, x.expiresAt ? h('time', { datetime: x.expiresAt }, formatTime(x.expiresAt)) : '')));
    this.body.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'none'))]));
  }
}
