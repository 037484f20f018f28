// Sign-in (keycloak-js: authorization code + PKCE, silent refresh) and the JSON API.
import Keycloak from 'keycloak-js';

export interface ConsoleConfig { keycloakUrl: string; realm: string; clientId: string }

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) { super(message); }
}

let kc: Keycloak;

export async function signIn(): Promise<Keycloak> {
  const cfg: ConsoleConfig = await (await fetch('/console-config.json')).json();
  kc = new Keycloak({ url: cfg.keycloakUrl, realm: cfg.realm, clientId: cfg.clientId });
  await kc.init({ onLoad: 'login-required', pkceMethod: 'S256', checkLoginIframe: false, responseMode: 'query' });
  // Refresh ahead of expiry; every new token also renews the stream-credential cookie, so
  // EventSource reconnects keep working for as long as the user is signed in.
  kc.onTokenExpired = () => void refresh();
  setInterval(() => void refresh(30), 10_000);
  return kc;
}

async function refresh(minValidity = 30): Promise<void> {
  try {
    if (await kc.updateToken(minValidity)) await renewStreamCredential();
  } catch {
    await kc.login();
  }
}

export async function token(): Promise<string> {
  await kc.updateToken(20).catch(() => kc.login());
  return kc.token ?? '';
}

export async function api<T>(path: string, init: RequestInit = {}): Promise<{ body: T; res: Response }> {
  const headers = new Headers(init.headers);
  headers.set('Authorization', `Bearer ${await token()}`);
  const res = await fetch(path, { ...init, headers });
  if (!res.ok) {
    let code = 'error', message = res.statusText;
    try { const e = await res.json(); code = e.error.code; message = e.error.message; } catch { /* not JSON */ }
    throw new ApiError(res.status, code, message);
  }
  const body = res.status === 204 ? (undefined as T) : ((await res.json()) as T);
  return { body, res };
}

/** Sets the HttpOnly stream-credential cookie the SSE routes accept (docs/auth.md). */
export async function renewStreamCredential(): Promise<void> {
  await api('/api/v1/stream-credential', { method: 'POST' });
}

export async function signOut(): Promise<void> {
  await api('/api/v1/stream-credential', { method: 'DELETE' }).catch(() => undefined);
  await kc.logout({ redirectUri: location.origin + '/' });
}
