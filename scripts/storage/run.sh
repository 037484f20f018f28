#!/usr/bin/env bash
# Runs a command with a private PostgreSQL and a private Redis on 127.0.0.1:
#
#   scripts/storage/run.sh -- cargo test -p kubelens-storage
#
# Unless KUBELENS_TEST_POSTGRES_URL / KUBELENS_TEST_REDIS_URL are already set (then those
# servers are used as they are), it starts
#   - PostgreSQL: initdb into a temp dir, pg_ctl on a free port, fsync off, as a non-root
#     user (postgres refuses to run as root);
#   - redis-server: free port, --bind 127.0.0.1, no RDB/AOF persistence;
# exports both URLs plus KUBELENS_TEST_PG_BINDIR / KUBELENS_TEST_REDIS_SERVER (used by the
# fault tests to start their own throw-away instances), runs the command and always stops
# what it started (trap on EXIT/INT/TERM). Exits with the command's status.
set -euo pipefail

if [ "${1:-}" = "--" ]; then shift; fi
if [ $# -eq 0 ]; then
    echo "usage: $0 -- <command...>" >&2
    exit 2
fi

here="$(cd "$(dirname "$0")" && pwd)"
"$here/install.sh" >&2

pg_bindir() {
    if [ -n "${KUBELENS_TEST_PG_BINDIR:-}" ]; then echo "$KUBELENS_TEST_PG_BINDIR"; return; fi
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ]; then echo "$d"; return; fi
    done
    dirname "$(command -v initdb)"
}

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$(( 20000 + RANDOM % 40000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

workdir="$(mktemp -d /tmp/kubelens-storage.XXXXXX)"
chmod 755 "$workdir"
pg_started=""
redis_pid=""
PG_BINDIR="$(pg_bindir)"
export KUBELENS_TEST_PG_BINDIR="$PG_BINDIR"
export KUBELENS_TEST_REDIS_SERVER="${KUBELENS_TEST_REDIS_SERVER:-$(command -v redis-server)}"

# postgres refuses root; run its tools as an unprivileged user.
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        local user="postgres"
        id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

cleanup() {
    local status=$?
    set +e
    if [ -n "$pg_started" ]; then
        as_pg_user "$PG_BINDIR/pg_ctl" -D "$workdir/pg" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
    rm -rf "$workdir"
    exit $status
}
trap cleanup EXIT INT TERM

if [ -z "${KUBELENS_TEST_POSTGRES_URL:-}" ]; then
    port="$(free_port)"
    mkdir -p "$workdir/pg"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        chown postgres "$workdir/pg"
    fi
    as_pg_user "$PG_BINDIR/initdb" -D "$workdir/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    as_pg_user "$PG_BINDIR/pg_ctl" -D "$workdir/pg" -l "$workdir/pg/server.log" -w -t 60 \
        -o "-p $port -k $workdir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null
    pg_started=1
    export KUBELENS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "storage: private PostgreSQL on 127.0.0.1:$port" >&2
fi

if [ -z "${KUBELENS_TEST_REDIS_URL:-}" ]; then
    port="$(free_port)"
    "$KUBELENS_TEST_REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$workdir" --logfile "$workdir/redis.log" >/dev/null 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    export KUBELENS_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
    echo "storage: private Redis on 127.0.0.1:$port" >&2
fi

set +e
"$@"
status=$?
set -e
exit $status
