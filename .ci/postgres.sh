#!/usr/bin/env bash
# Start a throwaway PostgreSQL server (Debian package) for the tuning storage test
# (`bash .ci/postgres.sh stop` stops it).
# Prints the SQLAlchemy URL on success; prints nothing (and says why on stderr) otherwise,
# in which case the PostgreSQL test is skipped. Best effort: never fails CI by itself.
set -uo pipefail
PORT="${MPO_PG_PORT:-55432}"
ROOT="${MPO_PG_DIR:-/tmp/mpo-ci-postgres}"
bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
BIN="$(bin_dir)"
if [ -z "$BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "postgres: installing the Debian package" >&2
  (timeout 300 apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 \
    || (timeout 300 apt-get update -q >/dev/null 2>&1 \
        && timeout 300 apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1)) \
    || echo "postgres: apt-get install failed" >&2
  BIN="$(bin_dir)"
fi
[ -n "$BIN" ] || { echo "postgres: no server binaries; the PostgreSQL test will be skipped" >&2; exit 0; }
RUN=()
if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
  id postgres >/dev/null 2>&1 || useradd -r postgres >/dev/null 2>&1
  RUN=(runuser -u postgres --)
fi
if [ -f "$ROOT/data/postmaster.pid" ]; then  # a server left by an earlier run
  "${RUN[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -m fast -w stop >/dev/null 2>&1
fi
[ "${1:-}" = stop ] && exit 0
rm -rf "$ROOT" && mkdir -p "$ROOT" && { [ "$(id -u)" != 0 ] || chown postgres "$ROOT"; }
"${RUN[@]}" "$BIN/initdb" -D "$ROOT/data" -A trust -U mpo >"$ROOT/initdb.log" 2>&1 \
  || { echo "postgres: initdb failed (see $ROOT/initdb.log)" >&2; exit 0; }
"${RUN[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" -w -t 60 \
  -o "-p $PORT -k $ROOT -c listen_addresses=127.0.0.1" start >/dev/null 2>&1 \
  || { echo "postgres: server did not start (see $ROOT/server.log)" >&2; exit 0; }
"$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U mpo mpo >/dev/null 2>&1 \
  || { echo "postgres: createdb failed" >&2; exit 0; }
echo "postgresql://mpo@127.0.0.1:$PORT/mpo"
