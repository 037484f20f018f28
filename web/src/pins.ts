// Pinned resources (namespaces, pods, apps): a bar of links in the header on every screen,
// and a pin button on the namespace and log views. Stored in the session, so they follow
// the user to another browser.
import { h } from './dom';
import { current, refHref, refLabel, sameRef, setPinned, update, type ResourceRef, type SessionDoc } from './session';

/** The header's pin bar (filled by `renderPins`). */
export function pinBar(): HTMLElement {
  const nav = h('nav', { id: 'pinned', class: 'pinned', 'aria-label': 'pinned resources' });
  fill(nav, current());
  return nav;
}

function fill(nav: HTMLElement, doc: SessionDoc): void {
  nav.replaceChildren(...doc.pinnedResources.map((r) => h('a', { href: refHref(r), class: `pin-link ${r.kind}`, title: `pinned ${r.kind}` }, refLabel(r))));
}

/** A button that pins / unpins `r` (key `p`). */
export function pinButton(r: ResourceRef): HTMLButtonElement {
  const b = h('button', { id: 'pin', title: 'pin / unpin (p)' });
  b.dataset.ref = JSON.stringify(r);
  paint(b, current());
  b.onclick = () => { const on = !current().pinnedResources.some((p) => sameRef(p, r)); void update(setPinned(r, on)); };
  return b;
}

function paint(b: HTMLButtonElement, doc: SessionDoc): void {
  const r = JSON.parse(b.dataset.ref ?? '{}') as ResourceRef;
  const on = doc.pinnedResources.some((p) => sameRef(p, r));
  b.setAttribute('aria-pressed', String(on));
  b.textContent = on ? '★ pinned' : '☆ pin';
}

/** Brings the pin bar and the pin button up to date with the session. */
export function renderPins(doc: SessionDoc): void {
  const nav = document.getElementById('pinned');
  if (nav) fill(nav, doc);
  const b = document.getElementById('pin');
  if (b instanceof HTMLButtonElement) paint(b, doc);
}
