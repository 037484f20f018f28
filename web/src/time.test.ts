import { describe, expect, it } from 'vitest';
import { formatTime, parseTime, relative } from './time';

describe('time', () => {
  it('parses RFC 3339 with nanoseconds and offsets', () => {
    expect(parseTime('2026-12-02T07:40:01.123456789Z')).toBe(Date.UTC(2026, 11, 2, 7, 40, 1, 123));
    expect(parseTime('2026-12-02T08:40:01+01:00')).toBe(Date.UTC(2026, 11, 2, 7, 40, 1));
    expect(parseTime('yesterday')).toBeNaN();
  });
  it('formats in UTC with a relative hint', () => {
    const now = Date.UTC(2026, 11, 2, 7, 30, 0);
    expect(formatTime('2026-12-02T07:40:01.5Z', now)).toBe('2026-12-02 07:40:01 UTC (in 10 min)');
    expect(formatTime('2026-12-02T07:29:30Z', now)).toBe('2026-12-02 07:29:30 UTC (30 s ago)');
    expect(formatTime('not a time', now)).toBe('not a time');
    expect(relative(now + 3 * 3600_000, now)).toBe('in 3 h');
    expect(relative(now, now)).toBe('now');
  });
});
