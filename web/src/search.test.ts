import { describe, expect, it } from 'vitest';
import { marked } from './search';

describe('marked', () => {
  it('marks every match and escapes the rest', () => {
    expect(marked('a<b> err x err', /err/g)).toBe('a&#60;b&#62; <mark>err</mark> x <mark>err</mark>');
    expect(marked('abc', /x*/g)).toBe('abc');
    expect(marked('<i>', null)).toBe('&#60;i&#62;');
  });
});
