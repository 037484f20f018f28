// The lines a log view keeps: at most `cap` (100,000 by default); older ones are dropped
// and counted, so the view can show "N older lines dropped" instead of silently losing them.

export interface LogLine {
  id: string;
  ts: string;
  pod?: string;
  container?: string;
  line: string;
  truncated: boolean;
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
