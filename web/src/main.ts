// The KubeLens console: namespace picker, pods and apps with live updates, the pod inspector,
// routing. Plain TypeScript; keycloak-js for sign-in; the log view is in logview.ts.
import { api, ApiError, renewStreamCredential, signIn, signOut } from './api';
import { ArchivedList } from './archive';
import { h } from './dom';
import { logView } from './logview';
import { pinBar, pinButton, renderPins } from './pins';
import { loadSession, onSessionChange, refHref, setActive, update } from './session';
import { LogStream } from './stream';
import { applyTheme, toggleTheme } from './theme';
import { formatTime } from './time';
import './style.css';

interface Pod { name: string; uid: string; phase?: string; reason?: string; ready: boolean; readyContainers: number; totalContainers: number; restarts: number; age: number; containers: { name: string }[]; initContainers: { name: string }[]; ownerApp?: { kind: string; name: string } }
interface App { kind: string; name: string; replicasDesired: number; replicasReady: number; pods: number; podNames: string[] }
interface Me { username: string; isAdmin: boolean }

const app = document.getElementById('app')!;
let me: Me;
let cleanup: (() => void)[] = [];

function age(seconds: number): string {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

function header(): HTMLElement {
  const theme = h('button', { id: 'theme', title: 'toggle theme (t)' }, 'theme');
  theme.onclick = toggleTheme;
  const out = h('button', { id: 'signout' }, 'sign out');
  out.onclick = () => void signOut();
  return h('header', {}, h('a', { href: '#/' , class: 'brand' }, 'KubeLens'), pinBar(), h('span', { class: 'spacer' }), h('span', { id: 'user' }, me?.username ?? ''), theme, out);
}

// ---- screens ----
function notAllowed(): void {
  const out = h('button', { id: 'signout' }, 'sign out');
  out.onclick = () => void signOut();
  app.replaceChildren(h('main', { class: 'center', id: 'not-allowed' },
    h('h1', {}, 'Not allowed'),
    h('p', {}, 'You are signed in, but your account is not in a group allowed to use KubeLens. Ask an administrator to add you to the logs access group.'),
    out));
}

async function namespaces(): Promise<void> {
  const { body } = await api<{ name: string }[]>('/api/v1/namespaces');
  const list = h('ul', { id: 'namespaces', class: 'cards' }, ...body.map((n) => h('li', {}, h('a', { href: `#/ns/${n.name}` }, n.name))));
  app.replaceChildren(header(), h('main', {}, h('h2', {}, 'Namespaces'), list));
}

async function namespace(ns: string): Promise<void> {
  const podsBody = h('tbody');
  const appsBody = h('tbody');
  const archived = h('tbody');
  const archive = new ArchivedList(ns, archived);
  cleanup.push(() => archive.stop());
  const pods = new Map<string, Pod>();
  const renderPods = () => {
    const rows = [...pods.values()].sort((a, b) => a.name.localeCompare(b.name)).map((p) => h('tr', { 'data-pod': p.name },
      h('td', {}, h('a', { href: `#/ns/${ns}/pod/${p.name}` }, p.name)),
      h('td', { class: `phase ${p.ready ? 'ok' : 'warn'}` }, p.reason ?? p.phase ?? ''),
      h('td', {}, `${p.readyContainers}/${p.totalContainers}`),
      h('td', {}, String(p.restarts)),
      h('td', {}, age(p.age)),
      h('td', {}, h('a', { href: `#/ns/${ns}/inspect/${p.name}` }, 'inspect'))));
    podsBody.replaceChildren(...rows);
    archive.setLive([...pods.values()].map((x) => x.uid));
  };
  app.replaceChildren(header(), h('main', {},
    h('nav', { class: 'crumbs' }, h('a', { href: '#/' }, 'namespaces'), ` / ${ns} `, pinButton({ kind: 'namespace', namespace: ns })),
    h('h2', {}, 'Pods'), h('table', { id: 'pods' }, h('thead', {}, h('tr', {}, ...['name', 'status', 'ready', 'restarts', 'age', ''].map((t) => h('th', {}, t)))), podsBody),
    h('h2', {}, 'Apps'), h('table', { id: 'apps' }, h('thead', {}, h('tr', {}, ...['name', 'kind', 'ready', 'pods'].map((t) => h('th', {}, t)))), appsBody),
    h('h2', {}, 'Archived (terminated) pods'), h('table', { id: 'archived' }, h('thead', {}, h('tr', {}, ...['name', 'app', 'lines', 'readable until'].map((t) => h('th', {}, t)))), archived)));
  const [p, a] = await Promise.all([api<Pod[]>(`/api/v1/namespaces/${ns}/pods`), api<App[]>(`/api/v1/namespaces/${ns}/apps`)]);
  for (const pod of p.body) pods.set(pod.name, pod);
  renderPods();
  appsBody.replaceChildren(...a.body.map((x) => h('tr', {},
    h('td', {}, h('a', { href: `#/ns/${ns}/app/${x.name}?kind=${x.kind}` }, x.name)), h('td', {}, x.kind), h('td', {}, `${x.replicasReady}/${x.replicasDesired}`), h('td', {}, String(x.pods)))));
  void archive.refresh();
  // Live updates from pods/watch.
  const watch = new LogStream(`/api/v1/namespaces/${ns}/pods/watch`, {
    onLines: () => undefined, onState: () => undefined,
    onEvent: (type, data) => {
      const pod = data as Pod;
      if (type === 'added' || type === 'modified') pods.set(pod.name, pod);
      else if (type === 'deleted') { pods.delete(pod.name); archive.expect(pod.name); }
      else return;
      renderPods();
    },
  }, ['added', 'modified', 'deleted']);
  watch.open();
  cleanup.push(() => watch.stop());
}

async function inspect(ns: string, pod: string): Promise<void> {
  const { body: d } = await api<any>(`/api/v1/namespaces/${ns}/pods/${pod}/details`);
  const env = h('table', { id: 'env' }, ...d.containers.flatMap((c: any) => c.env.map((e: any) => h('tr', { class: e.masked ? 'masked' : '' },
    h('td', {}, c.name), h('td', {}, e.name), h('td', {}, e.value ?? (e.valueFrom ? JSON.stringify(e.valueFrom) : ''))))));
  const metrics = h('div', { id: 'metrics' }, 'loading metrics…');
  app.replaceChildren(header(), h('main', {},
    h('nav', { class: 'crumbs' }, h('a', { href: `#/ns/${ns}` }, ns), ` / ${pod} `, h('a', { href: `#/ns/${ns}/pod/${pod}` }, 'logs')),
    h('h2', {}, `Pod ${pod}`), h('p', {}, `phase ${d.phase ?? '?'} · node ${d.node ?? '?'} · QoS ${d.qosClass ?? '?'}${d.masked ? ' · secrets masked (admin only)' : ''}`),
    h('h3', {}, 'Environment'), env,
    h('h3', {}, 'Volumes'), h('ul', {}, ...d.volumes.map((v: any) => h('li', {}, `${v.name} (${v.kind}) ${v.source ?? ''}`))),
    h('h3', {}, 'Conditions'), h('ul', {}, ...d.conditions.map((c: any) => h('li', {}, `${c.type ?? c.kind ?? ''} ${c.status ?? ''}`))),
    h('h3', {}, 'Events'), d.events.length === 0 ? h('p', { id: 'events' }, 'no events') : h('table', { id: 'events' },
      h('thead', {}, h('tr', {}, ...['type', 'reason', 'message', 'count', 'last seen'].map((t) => h('th', {}, t)))),
      h('tbody', {}, ...d.events.map((e: any) => h('tr', { class: e.type === 'Warning' ? 'warn' : '' },
        h('td', {}, e.type ?? ''), h('td', {}, e.reason ?? ''), h('td', {}, e.message ?? ''), h('td', {}, String(e.count ?? '')),
        h('td', {}, e.lastSeen ? h('time', { datetime: e.lastSeen }, formatTime(e.lastSeen)) : ''))))),
    h('h3', {}, 'Metrics'), metrics));
  api<any>(`/api/v1/namespaces/${ns}/pods/${pod}/metrics`).then(({ body }) => {
    metrics.replaceChildren(...body.containers.map((c: any) => h('div', {}, `${c.name}: cpu ${c.cpuMillicores ?? '?'}m, memory ${c.memoryBytes ?? '?'} bytes`)));
  }).catch(() => metrics.replaceChildren('metrics unavailable'));
}

// ---- routing ----
async function route(): Promise<void> {
  for (const c of cleanup.splice(0)) c();
  const [pathPart, qs] = location.hash.replace(/^#/, '').split('?');
  const q = new URLSearchParams(qs ?? '');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === 'ns' && parts[1] && parts[2] === 'pod' && parts[3]) await logView(app, header, cleanup, parts[1], 'pod', parts[3], q);
    else if (parts[0] === 'ns' && parts[1] && parts[2] === 'app' && parts[3]) await logView(app, header, cleanup, parts[1], 'app', parts[3], q);
    else if (parts[0] === 'ns' && parts[1] && parts[2] === 'inspect' && parts[3]) await inspect(parts[1], parts[3]);
    else if (parts[0] === 'ns' && parts[1]) await namespace(parts[1]);
    else await namespaces();
    if (parts[0] === 'ns') void update(setActive(parts[3] ? { kind: parts[2] === 'app' ? 'app' : 'pod', namespace: parts[1], name: parts[3] } : { kind: 'namespace', namespace: parts[1] }));
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return notAllowed();
    app.replaceChildren(header(), h('main', {}, h('p', { class: 'error', id: 'error' }, e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e))));
  }
}

async function start(): Promise<void> {
  await signIn();
  try {
    me = (await api<Me>('/api/v1/me')).body;
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return notAllowed();
    throw e;
  }
  await renewStreamCredential();
  onSessionChange((doc) => { applyTheme(doc.theme); renderPins(doc); });
  const doc = await loadSession();
  // Restore the last open resource after a reload or in another browser.
  if (!location.hash || location.hash === '#/') {
    const r = doc.activeResources[0];
    if (r) location.hash = refHref(r);
  }
  window.addEventListener('hashchange', () => void route());
  await route();
}

void start();
