import { describe, expect, it } from 'vitest';
import { DEFAULT_SESSION, refHref, sameRef, setActive, setPinned, setPref, setTheme } from './session';

describe('session changes', () => {
  it('pin / unpin is idempotent, so a change re-applied after a 412 is harmless', () => {
    const pod = { kind: 'pod' as const, namespace: 'team-a', name: 'debug' };
    const ns = { kind: 'namespace' as const, namespace: 'team-b' };
    let d = setPinned(pod, true)(setPinned(ns, true)(DEFAULT_SESSION));
    expect(setPinned(pod, true)(d).pinnedResources).toEqual([ns, pod]);
    d = setPinned(ns, false)(d);
    expect(d.pinnedResources).toEqual([pod]);
    expect(setPinned(ns, false)(d)).toEqual(d);
    expect(DEFAULT_SESSION.pinnedResources).toEqual([]);
  });
  it('other changes keep the rest of the document', () => {
    const d = setPref('wrap', true)(setTheme('dark')(setActive({ kind: 'namespace', namespace: 'team-a' })(DEFAULT_SESSION)));
    expect(d).toEqual({ activeResources: [{ kind: 'namespace', namespace: 'team-a' }], pinnedResources: [], theme: 'dark', uiPrefs: { wrap: true } });
  });
  it('routes and identity of refs', () => {
    expect(refHref({ kind: 'namespace', namespace: 'team-b' })).toBe('#/ns/team-b');
    expect(refHref({ kind: 'app', namespace: 'team-a', name: 'web' })).toBe('#/ns/team-a/app/web');
    expect(sameRef({ kind: 'pod', namespace: 'a', name: 'x', container: 'c' }, { kind: 'pod', namespace: 'a', name: 'x' })).toBe(true);
    expect(sameRef({ kind: 'pod', namespace: 'a', name: 'x' }, { kind: 'app', namespace: 'a', name: 'x' })).toBe(false);
  });
});
