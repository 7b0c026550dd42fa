#!/usr/bin/env bash
# Builds Roadie's image from deploy/Containerfile with podman
# (--isolation=chroot), on base images made on this machine, then runs it:
#
#   1. base images: Debian bookworm by debootstrap (trimmed as debian:slim
#      is), and a builder with gcc and this machine's Rust toolchain;
#   2. podman build of the same Containerfile a user builds, with those
#      images as its RUST_IMAGE and RUNTIME_IMAGE build arguments;
#   3. the image's metadata: non-root user, /data volume, SIGTERM, labels;
#   4. a server container on its SQLite default (a named volume on /data):
#      health SERVING, Put, Get, and the file written by the image's user;
#   5. a server and a worker container on the machine's Postgres (a fresh
#      database) with a provider on a loopback HTTP upstream: health SERVING,
#      worker ready, Put/Get and a Fetch that the worker container fetches;
#   6. SIGTERM stops each container with exit code 0.
#
# Needs root, podman, buildah, runc and debootstrap (installed from Debian's
# packages when missing), psql and a Postgres at $PGURL. Prints the time
# taken and the image's size. Base images are kept between runs
# (ROADIE_REBUILD_BASE=1 makes them again).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

# shellcheck source=deploy/containers.sh
source deploy/containers.sh
BASE=localhost/roadie-base
RUST_BASE=$BASE/rust:$(rustc --version | awk '{print $2}')
RUNTIME_BASE=$BASE/debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=target/image-base

step() { printf '\n=== verify-image: %s (%ds) ===\n' "$*" "$((SECONDS - started))"; }
fail() { echo "verify-image: FAILED: $*" >&2; exit 1; }

step "tools"
missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || fail "missing ${missing[*]} and no apt-get to install them"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap uidmap >/dev/null
fi
command -v psql >/dev/null || fail "psql is missing: the Postgres check needs it"
podman --version

# A Debian root made by debootstrap, trimmed of what debian:bookworm-slim
# also leaves out (documentation, manuals, locales, package lists).
debian_root() {
  local dir=$1 include=$2
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; fail "debootstrap into $dir"; }
  rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
    "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

step "base images"
if [[ ${ROADIE_REBUILD_BASE:-} == 1 ]]; then
  podman rmi -f "$RUNTIME_BASE" "$RUST_BASE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$RUNTIME_BASE"; then
  debian_root "$work/runtime" ""
  tar -C "$work/runtime" -c . | podman import \
    --change 'CMD ["/bin/bash"]' - "$RUNTIME_BASE" >/dev/null
  rm -rf "$work/runtime"
fi
if ! podman image exists "$RUST_BASE"; then
  # As the official rust image: gcc and libc headers for crates that build
  # C, CA certificates, and the toolchain on PATH with CARGO_HOME under
  # /usr/local/cargo. The toolchain is this machine's (no other can be
  # fetched here), without its documentation.
  debian_root "$work/rust" "ca-certificates,gcc,libc6-dev"
  # The machine's own certificate authorities too (an HTTPS proxy's, say),
  # so cargo reaches crates.io from inside the build as it does outside.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$work/rust/usr/local/share/ca-certificates/"
    chroot "$work/rust" update-ca-certificates >/dev/null
  fi
  sysroot=$(rustc --print sysroot)
  mkdir -p "$work/rust/usr/local/rust" "$work/rust/usr/local/cargo"
  cp -a "$sysroot"/bin "$sysroot"/lib "$sysroot"/libexec "$work/rust/usr/local/rust/"
  tar -C "$work/rust" -c . | podman import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]' - "$RUST_BASE" >/dev/null
  rm -rf "$work/rust"
fi
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep roadie-base

step "podman build --isolation=chroot -f deploy/Containerfile"
build_started=$SECONDS
podman build --isolation=chroot "${LIMITS[@]}" \
  -f deploy/Containerfile \
  --build-arg RUST_IMAGE="$RUST_BASE" \
  --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -t "$TAG" .
build_seconds=$((SECONDS - build_started))

step "image metadata"
inspect() { podman image inspect --format "$1" "$TAG"; }
[[ $(inspect '{{.Config.User}}') == 10001:10001 ]] || fail "the image does not run as 10001:10001"
[[ $(inspect '{{.Config.StopSignal}}') == SIGTERM ]] || fail "STOPSIGNAL is not SIGTERM"
inspect '{{json .Config.Volumes}}' | grep -q '"/data"' || fail "/data is not a volume"
for label in title version revision created licenses source; do
  [[ -n $(inspect "{{index .Config.Labels \"org.opencontainers.image.$label\"}}") ]] \
    || fail "label org.opencontainers.image.$label is missing"
done
size_bytes=$(inspect '{{.Size}}')
size_mb=$((size_bytes / 1000000))
echo "user 10001:10001, STOPSIGNAL SIGTERM, /data volume, OCI labels; size ${size_mb} MB"

# Everything below is removed on exit, whatever happened.
run_id=$$
database=roadie_image_$run_id
volume=roadie-image-data-$run_id
containers=()
upstream_pid=
cleanup() {
  local status=$?
  if ((status != 0)); then
    for c in "${containers[@]}"; do
      echo "--- logs of $c" >&2
      podman logs "$c" 2>&1 | tail -30 >&2 || true
    done
  fi
  for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  [[ -n $upstream_pid ]] && kill "$upstream_pid" 2>/dev/null || true
  psql "$PGURL" -qc "drop database if exists $database with (force)" >/dev/null 2>&1 || true
  rm -rf "$upstream_dir"
  exit "$status"
}
upstream_dir=$(mktemp -d)
trap cleanup EXIT

# Waits up to 60 s for `podman exec CONTAINER COMMAND…` to succeed.
until_ok() {
  local what=$1; shift
  for _ in $(seq 1 120); do
    if podman exec "$@" >/dev/null 2>&1; then return 0; fi
    if [[ $(podman inspect --format '{{.State.Running}}' "$1") != true ]]; then
      fail "$1 exited while waiting for $what"
    fi
    sleep 0.5
  done
  fail "$what: not within 60 s"
}

# Sends SIGTERM (the image's STOPSIGNAL) and expects exit code 0.
stops_cleanly() {
  podman stop --time 30 "$1" >/dev/null
  local code
  code=$(podman inspect --format '{{.State.ExitCode}}' "$1")
  [[ $code == 0 ]] || fail "$1 exited $code after SIGTERM"
  echo "$1: stopped by SIGTERM, exit 0"
}

step "server on the SQLite default (volume on /data)"
grpc=$(free_port)
admin=$(free_port)
podman volume create "$volume" >/dev/null
containers+=("roadie-sqlite-$run_id")
podman run -d "${RUN[@]}" --name "roadie-sqlite-$run_id" --network host \
  -v "$volume:/data" -e ROADIE__SERVER__LISTEN="127.0.0.1:$grpc" -e ROADIE__ADMIN__LISTEN="127.0.0.1:$admin" \
  "$TAG" >/dev/null
cli=(roadie --server "http://127.0.0.1:$grpc")
until_ok "health SERVING" "roadie-sqlite-$run_id" "${cli[@]}" health
podman exec "roadie-sqlite-$run_id" "${cli[@]}" put greeting hello >/dev/null
podman exec "roadie-sqlite-$run_id" "${cli[@]}" get greeting | grep -q hello || fail "Get after Put on SQLite"
owner=$(podman exec "roadie-sqlite-$run_id" stat -c %u:%g /data/roadie.db)
[[ $owner == 10001:10001 ]] || fail "/data/roadie.db is owned by $owner"
echo "health SERVING, Put and Get, /data/roadie.db owned by 10001:10001"
stops_cleanly "roadie-sqlite-$run_id"

step "server and worker on Postgres, a Fetch through the worker container"
psql "$PGURL" -qc "create database $database"
store_url="${PGURL%/*}/$database"
upstream=$(free_port)
mkdir -p "$upstream_dir/api/artist"
echo '{"id": "1", "name": "Roadie Check"}' >"$upstream_dir/api/artist/1"
python3 -m http.server "$upstream" --bind 127.0.0.1 --directory "$upstream_dir" >/dev/null 2>&1 &
upstream_pid=$!
grpc=$(free_port)
server_admin=$(free_port)
admin=$(free_port)
provider=(
  -e ROADIE__PROVIDERS__CHECK__BASE_URL="http://127.0.0.1:$upstream/api/"
  -e ROADIE__PROVIDERS__CHECK__ALLOW_PRIVATE=true
  -e ROADIE__PROVIDERS__CHECK__RATE_PER_SECOND=10
)
containers+=("roadie-server-$run_id" "roadie-worker-$run_id")
podman run -d "${RUN[@]}" --name "roadie-server-$run_id" --network host \
  -e ROADIE__STORE__URL="$store_url" -e ROADIE__SERVER__LISTEN="127.0.0.1:$grpc" \
  -e ROADIE__ADMIN__LISTEN="127.0.0.1:$server_admin" "${provider[@]}" "$TAG" >/dev/null
podman run -d "${RUN[@]}" --name "roadie-worker-$run_id" --network host \
  -e ROADIE__STORE__URL="$store_url" -e ROADIE__ADMIN__LISTEN="127.0.0.1:$admin" \
  "${provider[@]}" "$TAG" roadie-worker >/dev/null
cli=(roadie --server "http://127.0.0.1:$grpc")
until_ok "server health SERVING" "roadie-server-$run_id" "${cli[@]}" health
until_ok "worker ready" "roadie-worker-$run_id" roadie-worker ready
podman exec "roadie-server-$run_id" "${cli[@]}" put greeting hello >/dev/null
podman exec "roadie-server-$run_id" "${cli[@]}" get greeting | grep -q hello || fail "Get after Put on Postgres"
fetched=$(podman exec "roadie-server-$run_id" "${cli[@]}" --json fetch check artist/1)
grep -q 'Roadie Check' <<<"$fetched" || fail "Fetch did not bring the upstream's answer: $fetched"
again=$(podman exec "roadie-server-$run_id" "${cli[@]}" --json get "http://127.0.0.1:$upstream/api/artist/1")
grep -q 'Roadie Check' <<<"$again" || fail "the fetched entry is not cached: $again"
echo "health SERVING, worker ready, Put and Get, Fetch through the worker, then cached"
stops_cleanly "roadie-worker-$run_id"
stops_cleanly "roadie-server-$run_id"

step "passed"
echo "image $TAG: ${size_mb} MB; build ${build_seconds}s; whole run $((SECONDS - started))s"
