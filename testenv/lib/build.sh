# shellcheck shell=bash
# Build (once, cached by version) the Go binaries and fetch Keycloak.
# Source after common.sh. Entry points: ensure_binaries, ensure_keycloak.

GO_BINARIES="kube-apiserver etcd kwok metrics-server loggen helm"

# What each binary is built from, and how long a cold build usually takes here
# (2 cores; measured, see README).
_pkg_of() {
    case "$1" in
        kube-apiserver) echo "k8s.io/kubernetes/cmd/kube-apiserver" ;;
        kubectl) echo "k8s.io/kubernetes/cmd/kubectl" ;;
        etcd) echo "./cmd/etcd" ;;
        kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
        metrics-server) echo "sigs.k8s.io/metrics-server/cmd/metrics-server" ;;
        loggen) echo "./cmd/loggen" ;;
        helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    esac
}
_eta_of() {
    case "$1" in
        kube-apiserver) echo "usually 7-10 min cold on 2 cores, ~2 GiB RAM" ;;
        kubectl) echo "usually 3-5 min; only built when no kubectl is on PATH" ;;
        etcd) echo "usually under 1 min after kube-apiserver, which shares its packages" ;;
        kwok) echo "usually 1.5-3 min cold" ;;
        metrics-server) echo "usually 5-6 min cold, only built for --metrics" ;;
        loggen) echo "seconds" ;;
        helm) echo "usually 3-6 min cold (own module graph, incl. downloads)" ;;
    esac
}
_version_of() {
    case "$1" in
        kube-apiserver|kubectl) echo "$KUBERNETES_VERSION" ;;
        etcd) echo "$ETCD_VERSION" ;;
        kwok) echo "$KWOK_VERSION" ;;
        metrics-server) echo "$METRICS_SERVER_VERSION" ;;
        loggen) echo "local" ;;
        helm) echo "$HELM_VERSION" ;;
    esac
}

# The inputs of a build: the pins, the module graph and, for our own commands, the source.
# kwok and metrics-server are `go install`ed at their pinned version from their own module
# graph (kwok v0.7 does not compile against the k8s.io v0.34 libraries of kube-apiserver).
_stamp_of() {
    local name="$1" extra=""
    case "$name" in
        kwok) echo "kwok-$KWOK_VERSION"; return ;;
        metrics-server) echo "metrics-server-$METRICS_SERVER_VERSION"; return ;;
        helm) echo "helm-$HELM_VERSION"; return ;;
        etcd) extra="$TESTENV_HOME/cmd/etcd/main.go" ;;
        loggen) extra="$TESTENV_HOME/cmd/loggen/main.go" ;;
    esac
    # shellcheck disable=SC2086
    # (HELM_VERSION has its own stamp above: a helm bump must not rebuild the control plane.)
    cat <(grep -v '^HELM_VERSION=' "$TESTENV_HOME/versions.env") "$TESTENV_HOME/go.mod" "$TESTENV_HOME/go.sum" $extra \
        | sha256sum | cut -c1-16
}

_ldflags_of() {
    local name="$1" v
    case "$name" in
        kube-apiserver|kubectl)
            v="${KUBERNETES_VERSION#v}"
            echo "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=${v%%.*} -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
            ;;
        etcd) echo "-s -w" ;;
        helm)
            # What helm's own Makefile stamps: its version (`helm version`) and the Kubernetes
            # version it assumes for `helm template` (.Capabilities.KubeVersion) = its client-go.
            local kmin
            kmin="$(_helm_client_go_minor)"
            echo "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean${kmin:+ -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kmin}"
            ;;
        *) echo "-s -w" ;;
    esac
}

# The minor version of the k8s.io/client-go that helm $HELM_VERSION requires (v0.34.x -> 34).
_helm_client_go_minor() {
    local go gomod
    go="$(find_go)" || return 0
    gomod="$(cd / && GOFLAGS= "$go" mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>/dev/null \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [ -f "$gomod" ] || return 0
    sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -1
}

_check_gomod_pins() {
    local gomod="$TESTENV_HOME/go.mod" mod want
    for pair in "k8s.io/kubernetes $KUBERNETES_VERSION" "go.etcd.io/etcd/server/v3 $ETCD_VERSION"; do
        mod="${pair% *}"; want="${pair#* }"
        grep -qE "^[[:space:]]+$mod $want\$" "$gomod" \
            || die "testenv/go.mod does not require $mod $want as testenv/versions.env says; run testenv/lib/gen-gomod.sh"
    done
    local staging="v0.${KUBERNETES_VERSION#v1.}"
    if grep -E '=> k8s.io/[a-z0-9-]+ v0\.' "$gomod" | grep -vq " $staging\$"; then
        die "testenv/go.mod replaces k8s.io staging modules with something other than $staging; run testenv/lib/gen-gomod.sh"
    fi
}

# ensure_binaries [NAME...]: build missing/stale binaries into $BIN_DIR.
ensure_binaries() {
    local names="${*:-$GO_BINARIES}" name stale="" go
    mkdir -p "$BIN_DIR" "$SHARE_DIR"
    for name in $names; do
        if [ ! -x "$BIN_DIR/$name" ] || [ "$(cat "$BIN_DIR/.$name.stamp" 2>/dev/null)" != "$(_stamp_of "$name")" ]; then
            stale="$stale $name"
        fi
    done
    if [ -n "$stale" ] || [ ! -f "$SHARE_DIR/kwok-$KWOK_VERSION/.complete" ]; then
        # One builder at a time per cache (two concurrent 'up's must not build twice, and
        # must not copy KWOK's manifests over each other: a second run waiting here once
        # deleted the first one's half-copied manifests the moment the lock was released).
        exec 9>"$CACHE_ROOT/.build.lock"
        if ! flock -n 9; then
            log "another testenv build holds $CACHE_ROOT/.build.lock; waiting for it"
            flock 9
        fi
        if [ -n "$stale" ]; then
            go="$(find_go)" || die "Go toolchain not found (need go >= 1.24 on PATH or /usr/local/go/bin/go)"
            _check_gomod_pins
        fi
        for name in $stale; do
            if [ -x "$BIN_DIR/$name" ] && [ "$(cat "$BIN_DIR/.$name.stamp" 2>/dev/null)" = "$(_stamp_of "$name")" ]; then
                continue  # built by the holder of the lock meanwhile
            fi
            _build_one "$go" "$name"
        done
        _ensure_kwok_manifests
        flock -u 9
        exec 9>&-
    fi
}

_build_one() {
    local go="$1" name="$2" t0 tmp
    log "building $name $(_version_of "$name") ($(_eta_of "$name")); cached in $BIN_DIR, later runs reuse it"
    t0=$SECONDS
    tmp="$BIN_DIR/.$name.tmp.$$"
    (
        cd "$TESTENV_HOME"
        export GOTOOLCHAIN=local
        case "$name" in
            kwok|metrics-server|helm)
                export GOFLAGS="-trimpath" GOBIN="$tmp.d"
                "$go" install -p 2 -ldflags "$(_ldflags_of "$name")" "$(_pkg_of "$name")@$(_version_of "$name")"
                mv "$tmp.d/$name" "$tmp" && rmdir "$tmp.d"
                ;;
            *)
                export GOFLAGS="-trimpath -mod=readonly"
                "$go" build -p 2 -ldflags "$(_ldflags_of "$name")" -o "$tmp" "$(_pkg_of "$name")"
                ;;
        esac
    ) || { rm -rf "$tmp" "$tmp.d"; die "building $name failed (see the go output above)"; }
    mv -f "$tmp" "$BIN_DIR/$name"
    _stamp_of "$name" > "$BIN_DIR/.$name.stamp"
    log "built $name in $((SECONDS - t0))s"
}

# KWOK's CRDs and metric definitions come from the kwok module source (Go module cache);
# copy them next to the binaries so a run does not depend on the module cache.
_ensure_kwok_manifests() {
    local dst="$SHARE_DIR/kwok-$KWOK_VERSION" go src
    [ -f "$dst/.complete" ] && return 0
    go="$(find_go)" || die "Go toolchain not found"
    src="$(cd / && GOFLAGS= "$go" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
    [ -d "$src/kustomize/crd/bases" ] || die "kwok module source not found (looked in '$src')"
    # Staged beside the target and renamed: an interrupted copy never looks complete.
    local tmp="$dst.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/crds"
    cp "$src"/kustomize/crd/bases/*.yaml "$tmp/crds/"
    cp "$src/kustomize/metrics/resource/metrics-resource.yaml" "$tmp/"
    cp "$src/kustomize/metrics/usage/usage-from-annotation.yaml" "$tmp/"
    chmod -R u+w "$tmp"
    touch "$tmp/.complete"
    rm -rf "$dst"; mv "$tmp" "$dst"
}

# ensure_keycloak: unpack org.keycloak:keycloak-quarkus-dist into $KEYCLOAK_DIST (once).
ensure_keycloak() {
    [ -f "$KEYCLOAK_DIST/.complete" ] && return 0
    # The same lock as the Go builds: a concurrent run must not unpack over this one.
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/.build.lock"
    if ! flock -n 9; then
        log "another testenv build holds $CACHE_ROOT/.build.lock; waiting for it"
        flock 9
    fi
    if [ -f "$KEYCLOAK_DIST/.complete" ]; then flock -u 9; exec 9>&-; return 0; fi
    command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed once to fetch Keycloak $KEYCLOAK_VERSION; run testenv/ci-prereqs"
    local dl="$CACHE_ROOT/.download" t0=$SECONDS
    mkdir -p "$dl"
    log "fetching Keycloak $KEYCLOAK_VERSION (org.keycloak:keycloak-quarkus-dist, ~160 MB) with Maven; cached in $KEYCLOAK_DIST"
    mvn -B -q -Dstyle.color=never dependency:copy \
        "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz" \
        "-DoutputDirectory=$dl" -Dmdep.useBaseVersion=true >&2 \
        || die "mvn could not fetch org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz"
    rm -rf "$KEYCLOAK_DIST.tmp"; mkdir -p "$KEYCLOAK_DIST.tmp"
    tar -xzf "$dl/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz" -C "$KEYCLOAK_DIST.tmp" --strip-components=1 \
        || die "cannot unpack the Keycloak distribution"
    rm -rf "$KEYCLOAK_DIST"; mv "$KEYCLOAK_DIST.tmp" "$KEYCLOAK_DIST"
    rm -f "$dl/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz"
    touch "$KEYCLOAK_DIST/.complete"
    flock -u 9
    exec 9>&-
    log "Keycloak $KEYCLOAK_VERSION fetched and unpacked in $((SECONDS - t0))s"
}
