// Times as the console shows them: UTC, to the second, plus a relative hint.

/** Parses an RFC 3339 time (any number of fractional digits); NaN when invalid. */
export function parseTime(iso: string): number {
  const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/.exec(iso);
  if (!m) return NaN;
  return Date.parse(`${m[1]}${m[2] ? m[2].slice(0, 4) : ''}${m[3]}`);
}

/** "in 10 min", "in 2 h", "3 min ago", "now". */
export function relative(ms: number, now: number): string {
  const d = Math.round((ms - now) / 1000);
  const a = Math.abs(d);
  const text = a < 45 ? `${a} s` : a < 5400 ? `${Math.round(a / 60)} min` : a < 172800 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
  if (a < 1) return 'now';
  return d > 0 ? `in ${text}` : `${text} ago`;
}

/** "2026-12-02 07:40:01 UTC (in 10 min)", or the input unchanged when it is not a time. */
export function formatTime(iso: string, now = Date.now()): string {
  const ms = parseTime(iso);
  if (Number.isNaN(ms)) return iso;
  const abs = new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  return `${abs} (${relative(ms, now)})`;
}
