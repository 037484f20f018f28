# shellcheck shell=bash
# Shared helpers for testenv scripts. Source it; do not run it.

TESTENV_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$TESTENV_HOME/.." && pwd)"
# shellcheck source=../versions.env
. "$TESTENV_HOME/versions.env"

CACHE_ROOT="${KUBELENS_TESTENV_CACHE:-$HOME/.cache/kubelens-testenv}"
BIN_DIR="$CACHE_ROOT/$KUBERNETES_VERSION/bin"
SHARE_DIR="$CACHE_ROOT/$KUBERNETES_VERSION/share"
KEYCLOAK_DIST="$CACHE_ROOT/keycloak-$KEYCLOAK_VERSION"

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[testenv] ERROR: %s\n' "$*" >&2; exit 1; }

find_go() {
    if command -v go >/dev/null 2>&1; then command -v go
    elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
    else return 1; fi
}

find_kubectl() {
    if [ -n "${KUBECTL:-}" ] && [ -x "$KUBECTL" ]; then echo "$KUBECTL"
    elif command -v kubectl >/dev/null 2>&1; then command -v kubectl
    else return 1; fi
}

# Java home with a feature version >= $1 (default KEYCLOAK_MIN_JAVA).
# Order: $KUBELENS_TESTENV_JAVA_HOME, temurin-25, $JAVA_HOME, any JDK under /usr/lib/jvm.
find_java_home() {
    local min="${1:-$KEYCLOAK_MIN_JAVA}" cand v
    for cand in "${KUBELENS_TESTENV_JAVA_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 "${JAVA_HOME:-}" /usr/lib/jvm/*; do
        [ -n "$cand" ] && [ -x "$cand/bin/java" ] || continue
        v="$("$cand/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -1)"
        v="${v#1.}"
        if [ -n "$v" ] && [ "${v%%.*}" -ge "$min" ] 2>/dev/null; then echo "$cand"; return 0; fi
    done
    return 1
}

# Print a free TCP port on 127.0.0.1. Ports handed out by this shell are remembered
# so one run never picks the same port twice; the kernel's ephemeral allocator keeps
# concurrent runs apart.
_TESTENV_USED_PORTS=" "
free_port() {
    local p i
    for i in $(seq 1 50); do
        p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')" || return 1
        case "$_TESTENV_USED_PORTS" in *" $p "*) continue ;; esac
        _TESTENV_USED_PORTS="$_TESTENV_USED_PORTS$p "
        echo "$p"; return 0
    done
    return 1
}

# wait_until TIMEOUT_SECONDS DESCRIPTION LOGFILE PID CMD...
# Polls CMD every 0.5 s; fails with the tail of LOGFILE if PID dies or time runs out.
wait_until() {
    local timeout="$1" what="$2" logfile="$3" pid="$4"; shift 4
    local deadline=$((SECONDS + timeout))
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited before it became ready; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$what not ready after ${timeout}s; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

# Start time (clock ticks since boot) of PID, empty if it is gone.
proc_start_time() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# Record a started process group: record_pid PIDFILE NAME PID
record_pid() {
    echo "$2 $3 $(proc_start_time "$3")" >> "$1"
}

# Stop the process groups listed in PIDFILE ("name pgid starttime" per line), newest first:
# SIGTERM, wait up to GRACE seconds, then SIGKILL. The caller's own group is skipped.
stop_pidfile() {
    local pidfile="$1" grace="${2:-15}" own_pgid name pgid
    [ -f "$pidfile" ] || return 0
    own_pgid="$(ps -o pgid= -p $$ | tr -d ' ')"
    local -a groups=() names=()
    local start cur
    while read -r name pgid start _; do
        [ -n "${pgid:-}" ] || continue
        [ "$pgid" = "$own_pgid" ] && continue
        # A live leader with another start time means the pid was reused: not ours.
        cur="$(proc_start_time "$pgid")"
        if [ -n "$cur" ] && [ -n "${start:-}" ] && [ "$cur" != "$start" ]; then continue; fi
        groups=("$pgid" "${groups[@]}"); names=("$name" "${names[@]}")
    done < "$pidfile"
    local i alive deadline
    for i in "${!groups[@]}"; do
        if kill -0 -- "-${groups[$i]}" 2>/dev/null; then
            kill -TERM -- "-${groups[$i]}" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + grace))
    while :; do
        alive=0
        for i in "${!groups[@]}"; do
            kill -0 -- "-${groups[$i]}" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for i in "${!groups[@]}"; do
                if kill -0 -- "-${groups[$i]}" 2>/dev/null; then
                    log "${names[$i]} (pgid ${groups[$i]}) ignored SIGTERM for ${grace}s: SIGKILL"
                    kill -KILL -- "-${groups[$i]}" 2>/dev/null || true
                fi
            done
            sleep 0.2
            break
        fi
        sleep 0.2
    done
}
