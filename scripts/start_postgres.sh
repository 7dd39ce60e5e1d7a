#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the tests, idempotently.
#
#   eval "$(scripts/start_postgres.sh)"     # exports FTEDIT_TEST_POSTGRES_URL (+ _CTL)
#
# Installs Debian's `postgresql` package if it is missing (root, or sudo), makes a cluster owned
# by the `postgres` user under $FTEDIT_PG_DIR (default /tmp/ftedit-pg), starts it on 127.0.0.1
# at $FTEDIT_PG_PORT (default 55432, the next free port if taken by something else), creates
# the database `ftedit` and prints `export ...` lines on stdout. Logs go to stderr. Running it
# again reuses the running server. The tests make one fresh database per test from this one.
set -euo pipefail

PG_DIR="${FTEDIT_PG_DIR:-/tmp/ftedit-pg}"
PORT="${FTEDIT_PG_PORT:-55432}"
DB=ftedit
log() { echo "start_postgres: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bindir)" ]; then
  log "installing Debian's postgresql package"
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
fi
BIN="$(bindir)"
# The server refuses to run as root: everything below runs as the `postgres` user.
as_pg() { as_root runuser -u postgres -- "$@"; }

as_root mkdir -p "$PG_DIR"
as_root chown postgres:postgres "$PG_DIR"
if [ ! -s "$PG_DIR/data/PG_VERSION" ]; then
  log "initdb in $PG_DIR/data"
  # trust on loopback only: a test server with no password, reachable from this machine alone.
  as_pg "$BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync >&2
  echo "include_if_exists 'ftedit.conf'" | as_pg tee -a "$PG_DIR/data/postgresql.conf" >/dev/null
fi

running_port() { as_pg "$BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1 \
  && sed -n 4p "$PG_DIR/data/postmaster.pid"; }
if port="$(running_port)" && [ -n "$port" ]; then
  PORT="$port"
  log "already running on port $PORT"
else
  # A port held by something else: take the next free one.
  while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
  log "starting on 127.0.0.1:$PORT"
  # Settings live in a file (not `-o`) so a plain `pg_ctl start` (the restart test) reuses them.
  # fsync off: a throwaway cluster, speed over durability (tests create a database per test).
  printf '%s\n' "listen_addresses = '127.0.0.1'" "port = $PORT" \
    "unix_socket_directories = '$PG_DIR'" "fsync = off" "max_connections = 200" \
    | as_pg tee "$PG_DIR/data/ftedit.conf" >/dev/null
  as_pg "$BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start >&2
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$(as_pg "${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]
then
  as_pg "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB" >&2
fi

URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"
log "ready: $URL"
echo "export FTEDIT_TEST_POSTGRES_URL='$URL'"
# How a test restarts the server (the PostgreSQL-restart-mid-edit test).
echo "export FTEDIT_TEST_POSTGRES_CTL='runuser -u postgres -- $BIN/pg_ctl -D $PG_DIR/data -l $PG_DIR/server.log -w -t 60'"
