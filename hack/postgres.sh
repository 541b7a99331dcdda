#!/usr/bin/env bash
# A local PostgreSQL for the demo: `hack/postgres.sh start|stop|env`. Data under
# .local/postgres, listening on 127.0.0.1:${ORC_PG_PORT:-15432}, password authentication for
# the application user `orchestrator` (password in .local/postgres/password, never printed).
# When run as root the server runs as the `postgres` system user (PostgreSQL refuses root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.local/postgres"
port="${ORC_PG_PORT:-15432}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
  start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir"
      head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/password"
      head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/superuser"
      [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
      as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/superuser" -E UTF8 >/dev/null
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir" start >/dev/null
    fi
    export PGPASSWORD
    PGPASSWORD="$(cat "$dir/superuser")"
    psql() { "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAc "$1"; }
    if [ -z "$(psql "SELECT 1 FROM pg_roles WHERE rolname = 'orchestrator'")" ]; then
      psql "CREATE ROLE orchestrator LOGIN PASSWORD '$(cat "$dir/password")'"
      psql "CREATE DATABASE process OWNER orchestrator"
    fi
    echo "[postgres] running on 127.0.0.1:$port" >&2
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  env)
    # The settings orchestrator-server reads, for `eval`.
    echo "export DATABASE_HOST=127.0.0.1 DATABASE_PORT=$port DATABASE_NAME=process DATABASE_USER=orchestrator"
    echo "export DATABASE_PASSWORD=\"\$(cat '$dir/password')\" DATABASE_SSLMODE=disable"
    ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
