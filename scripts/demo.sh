#!/usr/bin/env bash
# The README's first command (`make run`): installs what it needs (testenv/ci-prereqs, the
# cached testenv binaries and Keycloak), starts the testenv (real kube-apiserver + KWOK +
# Keycloak), runs kubelens on the embedded default storage (sqlite) against it with the
# backend's ServiceAccount (the Helm chart's RBAC), keeps every seeded app's pods logging, and
# prints the URL, the sign-in users and a ready-to-paste `curl -N` with a real Keycloak token.
# The web console (web/, built with its locked npm packages) is served at the same URL.
#
#   make run   (= scripts/demo.sh; make demo is the same)   Ctrl-C stops everything it started.
#   KUBELENS_DEMO_SKIP_PREREQS=1 skips the prerequisite step (already done).
#
# Environment: DEMO_DIR (default target/demo), DEMO_PORT (default: a free port),
# DEMO_RATE (lines/s per container, default 2), KUBELENS_RELEASE=1 to build in release mode.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-$ROOT/target/demo}"
TESTENV_DIR="$DEMO_DIR/testenv"
RATE="${DEMO_RATE:-2}"
mkdir -p "$DEMO_DIR"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

T0=$SECONDS
PIDS=()
STARTED_TESTENV=0
cleanup() {
    set +e
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$STARTED_TESTENV" = 1 ]; then "$ROOT/testenv/down" "$TESTENV_DIR" >/dev/null 2>&1; fi
    say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 0. Prerequisites: Debian packages and checks, the cached testenv binaries (+ helm) and
#    Keycloak (idempotent; seconds when warm, ~15 min the first time).
if [ "${KUBELENS_DEMO_SKIP_PREREQS:-0}" != 1 ]; then
    say "[1/5] prerequisites (testenv/ci-prereqs + testenv/build; cached after the first run)"
    "$ROOT/testenv/ci-prereqs" >&2
    "$ROOT/testenv/build" --no-metrics >/dev/null
fi

# 1. testenv (reused when one is already running in $TESTENV_DIR).
say "[2/5] testenv"
if [ -f "$TESTENV_DIR/env" ] && \
   curl -sfk "$(grep '^TESTENV_APISERVER_URL=' "$TESTENV_DIR/env" | cut -d= -f2-)/readyz" \
        -H "Authorization: Bearer $(grep '^TESTENV_ADMIN_TOKEN=' "$TESTENV_DIR/env" | cut -d= -f2-)" >/dev/null 2>&1; then
    say "reusing the testenv in $TESTENV_DIR"
else
    say "starting the testenv in $TESTENV_DIR (first run builds Kubernetes from source: ~15 min; later runs ~1 min)"
    "$ROOT/testenv/up" "$TESTENV_DIR" >&2
    STARTED_TESTENV=1
fi
set -a
# shellcheck disable=SC1091
. "$TESTENV_DIR/env"
set +a

# 2. kubelens: sqlite storage, the ServiceAccount's kubeconfig, Keycloak of the testenv.
PROFILE_FLAG=""; PROFILE_DIR=debug
if [ "${KUBELENS_RELEASE:-0}" = 1 ]; then PROFILE_FLAG="--release"; PROFILE_DIR=release; fi
say "[3/5] building kubelens ($PROFILE_DIR; first build several minutes, then seconds) and the web console"
(cd "$ROOT" && cargo build $PROFILE_FLAG -p kubelens-salvo --bin kubelens)
# The console: locked npm packages once, then a build whenever a source is newer than it.
if [ ! -d "$ROOT/web/node_modules" ]; then (cd "$ROOT/web" && npm ci --no-audit --no-fund); fi
if [ ! -f "$ROOT/web/dist/index.html" ] || \
   [ -n "$(find "$ROOT/web/src" "$ROOT/web/index.html" "$ROOT/web/package-lock.json" -newer "$ROOT/web/dist/index.html" -print -quit)" ]; then
    (cd "$ROOT/web" && npm run build --silent >&2)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/$PROFILE_DIR/kubelens"

cat > "$DEMO_DIR/sa-kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: $TESTENV_APISERVER_URL
    certificate-authority: $TESTENV_APISERVER_CA
users:
- name: kubelens
  user:
    token: $TESTENV_SA_TOKEN
contexts:
- name: testenv
  context: {cluster: testenv, user: kubelens}
current-context: testenv
EOF
chmod 600 "$DEMO_DIR/sa-kubeconfig"
PORT="${DEMO_PORT:-$(free_port)}"
cat > "$DEMO_DIR/config.yaml" <<EOF
server:
  listen: 127.0.0.1:$PORT
  web_root: $ROOT/web/dist
  web_client_id: ${TESTENV_WEB_CLIENT_ID:-kubelens-web}
auth:
  keycloak_url: $TESTENV_KEYCLOAK_URL
  realm: ${TESTENV_REALM:-kubelens}
  client_id: ${TESTENV_BACKEND_CLIENT_ID:-kubelens}
  trusted_clients: [${TESTENV_WEB_CLIENT_ID:-kubelens-web}]
  allowed_groups: [k8s-logs-access]
  admin_group: k8s-admin-access
kubernetes:
  kubeconfig: $DEMO_DIR/sa-kubeconfig
namespaces:
  allowed: [team-a, team-b]
storage:
  backend: sqlite
  sqlite:
    path: $DEMO_DIR/kubelens.db
EOF
say "[4/5] starting kubelens on 127.0.0.1:$PORT (log: $DEMO_DIR/kubelens.log)"
KUBELENS_LOG_FORMAT=pretty "$BIN" --config "$DEMO_DIR/config.yaml" >"$DEMO_DIR/kubelens.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "${PIDS[0]}" 2>/dev/null; then say "kubelens exited:"; tail -20 "$DEMO_DIR/kubelens.log" >&2; exit 1; fi
    sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || say "warning: /readyz is not 200 yet (see $DEMO_DIR/kubelens.log)"

# The console signs in from http://127.0.0.1:$PORT: Keycloak must accept that origin for the
# token request (testenv's realm allows any redirect URI, but its `+` web origin derives no
# origin from `*`, and the port is picked per run). Added through the admin API, idempotently.
python3 - "$TESTENV_KEYCLOAK_URL" "${TESTENV_REALM:-kubelens}" "${TESTENV_WEB_CLIENT_ID:-kubelens-web}" \
    "http://127.0.0.1:$PORT" <<'PY' || say "warning: could not allow the console's origin in Keycloak; browser sign-in will fail"
import json, os, sys, urllib.parse, urllib.request
kc, realm, client_id, origin = sys.argv[1:5]
form = urllib.parse.urlencode({"grant_type": "password", "client_id": "admin-cli",
    "username": os.environ["TESTENV_KEYCLOAK_ADMIN_USER"], "password": os.environ["TESTENV_KEYCLOAK_ADMIN_PASSWORD"]}).encode()
token = json.load(urllib.request.urlopen(f"{kc}/realms/master/protocol/openid-connect/token", form, timeout=30))["access_token"]
auth = {"Authorization": f"Bearer {token}"}
url = f"{kc}/admin/realms/{realm}/clients"
client = json.load(urllib.request.urlopen(urllib.request.Request(f"{url}?clientId={client_id}", headers=auth), timeout=30))[0]
if origin not in client.get("webOrigins", []):
    client["webOrigins"] = client.get("webOrigins", []) + [origin]
    put = urllib.request.Request(f"{url}/{client['id']}", json.dumps(client).encode(), method="PUT",
                                 headers={**auth, "Content-Type": "application/json"})
    urllib.request.urlopen(put, timeout=30)
PY

# 3. Keep every seeded pod's containers logging (one generator per container log file that
#    the seeding wrote, except previous-instance files), $RATE lines/s each.
say "[5/5] keeping the seeded apps logging ($RATE lines/s per container)"
GENERATORS=0
while IFS= read -r file; do
    rel="${file#"$TESTENV_LOG_DIR"/}"   # <ns>/<pod>/<container>.log
    "$TESTENV_LOGGEN" --file "$file" --count 0 --rate "$RATE" \
        --src "${rel%.log}" --start-seq 1000 --quiet &
    PIDS+=($!)
    GENERATORS=$((GENERATORS + 1))
done < <(find "$TESTENV_LOG_DIR" -name '*.log' ! -name '*.previous.log' | sort)

# 4. A real token (user viewer, group /k8s-logs-access) and the command.
token() {
    curl -sf "$TESTENV_KEYCLOAK_URL/realms/${TESTENV_REALM:-kubelens}/protocol/openid-connect/token" \
        -d grant_type=password -d client_id="${TESTENV_WEB_CLIENT_ID:-kubelens-web}" \
        -d username=viewer -d password="${TESTENV_USER_VIEWER_PASSWORD:-viewer-pw}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
TOKEN="$(token)"
cat <<EOF

  KubeLens is running on http://127.0.0.1:$PORT (storage: sqlite $DEMO_DIR/kubelens.db),
  ready $((SECONDS - T0)) s after the start.
  Web console: open http://127.0.0.1:$PORT/ in a browser and sign in (users below).
  API: http://127.0.0.1:$PORT/api/v1/openapi.json. $GENERATORS seeded containers log $RATE lines/s.

  Keycloak $TESTENV_KEYCLOAK_URL, realm ${TESTENV_REALM:-kubelens}; sign-in users (user / password):
    viewer  / viewer-pw    group /k8s-logs-access: reads team-a and team-b
    admin   / admin-pw     also /k8s-admin-access: sees secret values unmasked
    nogroup / nogroup-pw   no group: refused (403)

  Live-tail the app team-a/web (3 pods) as viewer, paste:

curl -N -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/namespaces/team-a/apps/web/logs?tailLines=5"

  More: .../pods/web-7d9f8b6c5d-x2k4p/logs?follow=false   .../pods/crashy/logs?previous=true
  The token expires in an hour (Keycloak realm setting); a new one:
    curl -s $TESTENV_KEYCLOAK_URL/realms/${TESTENV_REALM:-kubelens}/protocol/openid-connect/token -d grant_type=password \\
      -d client_id=${TESTENV_WEB_CLIENT_ID:-kubelens-web} -d username=viewer -d password=viewer-pw | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 
  Ctrl-C stops kubelens, the generators$( [ "$STARTED_TESTENV" = 1 ] && echo " and the testenv").

EOF
wait "${PIDS[0]}"
