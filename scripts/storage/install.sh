#!/usr/bin/env bash
# Installs PostgreSQL and Redis from Debian packages when they are missing. Idempotent:
# runs `apt-get update` at most once, and only when something has to be installed.
set -euo pipefail

need=()
pg_bin() {
    # Debian puts the server binaries under /usr/lib/postgresql/<major>/bin, off PATH.
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
pg_bin || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -eq 0 ]; then
    echo "storage: postgresql and redis-server already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "storage: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
# The Debian packages start system-wide services; the tests use private instances, so stop
# them where a service manager exists (ignored inside containers without one).
for svc in redis-server postgresql; do
    if command -v service >/dev/null 2>&1; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
done
echo "storage: installed ${need[*]}"
