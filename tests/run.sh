#!/usr/bin/env bash
# Installs what the test suite needs when it is missing, starts it, and runs
# every test: PostgreSQL (Debian packages, or the one already running), a
# Kafka-protocol broker (tansu, built once and cached), Mesa's lavapipe for
# the wgpu tests, promtool, systemd-analyze, Node.js packages and
# check-jsonschema for the deployment files and dashboards.
# Safe to run again: it reuses what it finds.
#
#   tests/run.sh                 # the whole suite
#   tests/run.sh --test cli      # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
export HOME
# rustup's default location, for shells that did not source ~/.cargo/env.
[ -x "$HOME/.cargo/bin/cargo" ] && case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) PATH=$HOME/.cargo/bin:$PATH ;; esac
CACHE=${MODELWATCH_CACHE:-$HOME/.cache/modelwatch}
TANSU_VERSION=0.6.0
TANSU_ROOT=$CACHE/tansu-$TANSU_VERSION
mkdir -p "$CACHE"
log() { printf '== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- toolchain pieces librdkafka's bundled build needs -----------------------
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
missing=()
for tool in cc c++ make pkg-config perl python3 openssl mkfifo; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build tools (missing: ${missing[*]})"
  apt_install build-essential pkg-config perl python3 libssl-dev openssl coreutils
fi

# --- Vulkan software adapter for the wgpu tests ------------------------------
# lavapipe from Debian 12's own Mesa segfaults or hangs under burn's kernels;
# the backports' Mesa 25 runs them (see daemon/docs/gpu.md).
if [ "${MODELWATCH_SKIP_WGPU:-0}" != 1 ] && ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  log "installing Mesa lavapipe"
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
      apt_updated=
    fi
    apt_install -t bookworm-backports mesa-vulkan-drivers libvulkan1
  else
    apt_install mesa-vulkan-drivers libvulkan1
  fi
fi

# --- promtool and systemd-analyze, for the deployment files ----------------------
if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian package prometheus)"
  apt_install --no-install-recommends prometheus
fi
if ! command -v systemd-analyze >/dev/null; then
  log "installing systemd-analyze (Debian package systemd)"
  apt_install --no-install-recommends systemd
fi

# --- published schemas for the deployment files and dashboards -------------------
# tests/deploy.rs and tests/dashboards.rs check the Kubernetes manifests, the
# Dockerfile and the dashboards with the npm packages pinned in
# tests/schemas/package-lock.json, and the compose stack with check-jsonschema.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "installing Node.js (Debian packages nodejs, npm)"
  apt_install --no-install-recommends nodejs npm
fi
node_major=$(node --version | sed 's/^v\([0-9]*\).*/\1/')
[ "$node_major" -ge 18 ] || { echo "Node.js 18 or later is needed for the schema checks (found $(node --version))" >&2; exit 1; }
SCHEMAS=$CACHE/schemas
if ! cmp -s tests/schemas/package-lock.json "$SCHEMAS/package-lock.json" || [ ! -d "$SCHEMAS/node_modules" ]; then
  log "installing the schema packages into $SCHEMAS"
  mkdir -p "$SCHEMAS"
  cp tests/schemas/package.json tests/schemas/package-lock.json "$SCHEMAS/"
  (cd "$SCHEMAS" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
export MODELWATCH_SCHEMAS=$SCHEMAS
TOOLS_VENV=$CACHE/tools-venv
# check-jsonschema for the compose file, py-ocsf-models for OCSF findings.
TOOLS_PINS="check-jsonschema==0.39.0 py-ocsf-models==0.10.0"
if [ "$(cat "$TOOLS_VENV/pins" 2>/dev/null)" != "$TOOLS_PINS" ]; then
  log "installing $TOOLS_PINS into $TOOLS_VENV"
  python3 -m venv "$TOOLS_VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$TOOLS_VENV"; }
  # shellcheck disable=SC2086
  "$TOOLS_VENV/bin/pip" install -q $TOOLS_PINS
  echo "$TOOLS_PINS" >"$TOOLS_VENV/pins"
fi
export MODELWATCH_TOOLS_VENV=$TOOLS_VENV

# --- PostgreSQL ----------------------------------------------------------------
PG_URL=${MODELWATCH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pg_ok() { psql "$PG_URL" -Atqc 'select 1' >/dev/null 2>&1; }
if ! pg_ok; then
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  for v in /etc/postgresql/*; do
    [ -d "$v/main" ] || continue
    log "starting PostgreSQL $(basename "$v")"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start 2>/dev/null || true
  done
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  if ! pg_ok; then
    # A fresh install asks for a password over TCP: give the postgres role one.
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'modelwatch'\"" >/dev/null
    PG_URL=postgres://postgres:modelwatch@127.0.0.1:5432/postgres
  fi
  pg_ok || { echo "cannot reach PostgreSQL at $PG_URL" >&2; exit 1; }
fi
export MODELWATCH_TEST_DATABASE_URL=$PG_URL

# TLS for tests/secrets.rs: Debian's clusters come with it on (the snakeoil
# certificate); elsewhere a self-signed one is made and the server reloaded.
if [ "$(psql "$PG_URL" -Atqc 'show ssl' 2>/dev/null)" = off ]; then
  log "turning TLS on in PostgreSQL with a self-signed certificate"
  TLS_DIR=/var/lib/modelwatch-test-tls
  as_root mkdir -p "$TLS_DIR"
  as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.crt" 2>/dev/null
  as_root chown -R postgres "$TLS_DIR" && as_root chmod 600 "$TLS_DIR/server.key"
  psql "$PG_URL" -qc "ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.crt'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/server.key'" \
    -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 1
fi

# --- Kafka-protocol broker -----------------------------------------------------
TANSU=$TANSU_ROOT/bin/tansu
if [ ! -x "$TANSU" ]; then
  log "building tansu $TANSU_VERSION once into $TANSU_ROOT (15-25 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$TANSU_ROOT"
fi
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${MODELWATCH_TEST_BROKER_PORT:-19092}
while ! port_free "$PORT"; do PORT=$((PORT + 1)); done
RUNDIR=$(mktemp -d)
log "starting tansu on 127.0.0.1:$PORT"
"$TANSU" broker --storage-engine memory://tansu/ \
  --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  >"$RUNDIR/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $TANSU_PID 2>/dev/null || true; wait $TANSU_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do ! port_free "$PORT" && break; sleep 0.5; done
port_free "$PORT" && { echo "tansu did not start:" >&2; cat "$RUNDIR/tansu.log" >&2; exit 1; }
export MODELWATCH_TEST_BROKERS=127.0.0.1:$PORT
# Tests that need a broker of their own (one behind a fault proxy) start it.
export MODELWATCH_TEST_TANSU=$TANSU

# --- the suite -------------------------------------------------------------------
log "running the tests"
status=0
cargo test --release --locked "$@" 2>&1 | tee "$RUNDIR/test.log" || status=$?
# One closing line over every test binary, so a reader (or CI) need not add
# up the per-binary summaries.
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$RUNDIR/test.log")
echo "modelwatch: $passed passed, $failed failed"
exit "$status"
