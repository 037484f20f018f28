// The lines a log view keeps: at most `cap` (100,000 by default); older ones are dropped
// and counted, so the view can show "N older lines dropped" instead of silently losing them.

import { escapeHtml } from './dom';

export interface LogLine {
  id: string;
  ts: string;
  pod?: string;
  container?: string;
  line: string;
  truncated: boolean;
  /** The level the server detected (docs/logs.md "Structured lines"), when it found one. */
  level?: string;
  /** The line's flat top-level fields, sent only when the stream asked for `fields=true`. */
  fields?: Record<string, string>;
}

export const DEFAULT_CAP = 100_000;

export class LineBuffer {
  private items: LogLine[] = [];
  private start = 0; // index of the first kept line in `items` (compacted lazily)
  dropped = 0;

  constructor(readonly cap = DEFAULT_CAP) {}

  get length(): number {
    return this.items.length - this.start;
  }

  at(i: number): LogLine | undefined {
    return this.items[this.start + i];
  }

  push(lines: LogLine[]): void {
    for (const l of lines) this.items.push(l);
    const over = this.length - this.cap;
    if (over > 0) {
      this.start += over;
      this.dropped += over;
      // Compact once the dead prefix is as large as the live part: amortised O(1) per line.
      if (this.start >= this.cap) {
        this.items = this.items.slice(this.start);
        this.start = 0;
      }
    }
  }

  clear(): void {
    this.items = [];
    this.start = 0;
    this.dropped = 0;
  }

  all(): LogLine[] {
    return this.items.slice(this.start);
  }

  /** Index of the line with this id among the last `within` lines, or -1. */
  lastIndexOf(id: string, within = this.length): number {
    for (let i = this.length - 1; i >= Math.max(0, this.length - within); i--) if (this.at(i)?.id === id) return i;
    return -1;
  }
}

/**
 * What a log view shows of its buffer: every line, or (in an app view with pods switched off)
 * only the lines of the pods still on. The filtered copy is rebuilt when a pod is toggled and
 * kept in step on every push, bounded by the same cap.
 */
export class PodFilter {
  readonly hidden = new Set<string>();
  private shown = new LineBuffer();

  constructor(private all: LineBuffer) {}

  /** The lines to show. */
  view(): LineBuffer {
    return this.hidden.size ? this.shown : this.all;
  }

  push(lines: LogLine[]): void {
    if (this.hidden.size) this.shown.push(lines.filter((l) => !this.hidden.has(l.pod ?? '')));
  }

  toggle(pod: string): void {
    if (!this.hidden.delete(pod)) this.hidden.add(pod);
    this.shown = new LineBuffer(this.all.cap);
    if (this.hidden.size) this.shown.push(this.all.all().filter((l) => !this.hidden.has(l.pod ?? '')));
  }

  clear(): void {
    this.shown.clear();
  }
}

const LEVEL_WORDS = 'trace|debug|info|warn(?:ing)?|error|fatal|panic';
const LEVEL_FIELD = new RegExp(`(?:\\blevel=|"level":\\s*")(${LEVEL_WORDS})\\b`, 'i');
const LEVEL_WORD = new RegExp(`\\b(${LEVEL_WORDS})\\b`, 'i');

/** A level word found in a line (for colouring), or ''. */
export function levelOf(text: string): string {
  // An explicit level field wins over a level word elsewhere (e.g. "debug" in a pod name).
  const m = LEVEL_FIELD.exec(text) ?? LEVEL_WORD.exec(text);
  if (!m) return '';
  const l = m[1].toLowerCase();
  return l === 'warning' ? 'warn' : l === 'panic' ? 'fatal' : l;
}

/** The level to colour a line with: the server's when it sent one, else a guess from the text. */
export function lineLevel(l: LogLine): string {
  return l.level ?? levelOf(l.line);
}

/** Pretty-printed JSON when the whole line is a JSON object, else null. */
export function prettyJson(text: string): string | null {
  const t = text.trim();
  if (!t.startsWith('{') || !t.endsWith('}')) return null;
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch {
    return null;
  }
}

/** HTML for a line's fields as `key=value` chips, escaped; '' when it has none. */
export function fieldsHtml(fields: Record<string, string> | undefined): string {
  if (!fields) return '';
  return Object.entries(fields).map(([k, v]) => `<span class="f"><span class="k">${escapeHtml(k)}</span>=<span class="v">${escapeHtml(v)}</span></span>`).join(' ');
}
