import { describe, expect, it } from 'vitest';
import { LineBuffer, levelOf, prettyJson, type LogLine } from './lines';

const line = (n: number): LogLine => ({ id: String(n), ts: '', line: `seq=${n}`, truncated: false });

describe('LineBuffer', () => {
  it('keeps at most cap lines and counts the dropped ones', () => {
    const b = new LineBuffer(1000);
    for (let i = 0; i < 5000; i += 7) b.push(Array.from({ length: 7 }, (_, k) => line(i + k)));
    expect(b.length).toBe(1000);
    expect(b.dropped).toBe(5005 - 1000);
    expect(b.at(0)?.line).toBe(`seq=${5005 - 1000}`);
    expect(b.at(999)?.line).toBe('seq=5004');
    expect(b.all().map((l) => l.id)).toEqual(Array.from({ length: 1000 }, (_, i) => String(4005 + i)));
  });
});

describe('levelOf / prettyJson', () => {
  it('finds levels and pretty-prints JSON objects only', () => {
    expect(levelOf('x level=error msg=boom')).toBe('error');
    expect(levelOf('{"level":"warning"}')).toBe('warn');
    expect(levelOf('nothing here')).toBe('');
    expect(levelOf('seq=10 src=team-a/debug/debug seed line 10 level=error msg="x"')).toBe('error');
    expect(levelOf('{"pod":"debug-1","level":"info"}')).toBe('info');
    expect(levelOf('[WARN] disk')).toBe('warn');
    expect(prettyJson('{"a":1}')).toBe('{\n  "a": 1\n}');
    expect(prettyJson('{not json}')).toBeNull();
    expect(prettyJson('plain')).toBeNull();
  });
});
