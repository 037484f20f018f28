import { describe, expect, it } from 'vitest';
import { fieldsHtml, LineBuffer, levelOf, PodFilter, prettyJson, type LogLine } from './lines';

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

describe('PodFilter', () => {
  const of = (n: number, pod: string): LogLine => ({ ...line(n), pod });
  it('shows every line until a pod is switched off, then only the others, in step with pushes', () => {
    const all = new LineBuffer(100);
    const f = new PodFilter(all);
    const push = (ls: LogLine[]) => { all.push(ls); f.push(ls); };
    push([of(1, 'a'), of(2, 'b'), of(3, 'a')]);
    expect(f.view()).toBe(all);
    f.toggle('a');
    expect(f.view().all().map((l) => l.id)).toEqual(['2']);
    push([of(4, 'a'), of(5, 'b')]);
    expect(f.view().all().map((l) => l.id)).toEqual(['2', '5']);
    f.toggle('a');
    expect(f.view().all().map((l) => l.id)).toEqual(['1', '2', '3', '4', '5']);
  });
  it('finds a line by id among the last lines only', () => {
    const b = new LineBuffer(10);
    b.push(Array.from({ length: 15 }, (_, i) => line(i)));
    expect(b.lastIndexOf('14')).toBe(9);
    expect(b.lastIndexOf('5', 3)).toBe(-1);
    expect(b.lastIndexOf('5')).toBe(0);
    expect(b.lastIndexOf('2')).toBe(-1);
  });
});

describe('fieldsHtml', () => {
  it('escapes keys and values', () => {
    expect(fieldsHtml({ msg: '<b>', 'a"': '1' })).toBe('<span class="f"><span class="k">msg</span>=<span class="v">&#60;b&#62;</span></span> <span class="f"><span class="k">a&#34;</span>=<span class="v">1</span></span>');
    expect(fieldsHtml(undefined)).toBe('');
  });
});
