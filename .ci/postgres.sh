# Sourced by .ci/run (bash, set -euo pipefail): start a throw-away PostgreSQL cluster on
# 127.0.0.1 for the store's tests, export ANOMSEG_TEST_PG_URL, and stop it on exit.
# Uses Debian's binaries (/usr/lib/postgresql/*/bin). initdb refuses to run as root, so as root
# the cluster belongs to the 'postgres' user (created when the package did not create it).
# Failing to start is fatal: the PostgreSQL tests must never pass by being skipped in CI.

_anomseg_pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$_anomseg_pg_bin" ] || [ ! -x "$_anomseg_pg_bin/initdb" ]; then
  echo "ci: PostgreSQL binaries not found under /usr/lib/postgresql/*/bin" >&2
  return 1 2>/dev/null || exit 1
fi
_anomseg_pg_dir="$(mktemp -d /tmp/anomseg-pg.XXXXXX)"
_anomseg_pg_as=()
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  chown postgres "$_anomseg_pg_dir"
  _anomseg_pg_as=(runuser -u postgres --)
fi
_anomseg_pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

_anomseg_pg() { ${_anomseg_pg_as[@]+"${_anomseg_pg_as[@]}"} "$_anomseg_pg_bin/$1" "${@:2}"; }

_anomseg_pg_stop() {
  _anomseg_pg pg_ctl -D "$_anomseg_pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$_anomseg_pg_dir"
}

if ! _anomseg_pg initdb -D "$_anomseg_pg_dir/data" -U anomseg --auth=trust -E UTF8 \
      >"$_anomseg_pg_dir/initdb.log" 2>&1; then
  cat "$_anomseg_pg_dir/initdb.log" >&2
  echo "ci: initdb failed" >&2
  return 1 2>/dev/null || exit 1
fi
# fsync off: a throw-away cluster; 200 connections: 4 writer processes x pool + the test itself
if ! _anomseg_pg pg_ctl -D "$_anomseg_pg_dir/data" -l "$_anomseg_pg_dir/server.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $_anomseg_pg_port -k $_anomseg_pg_dir -c fsync=off -c max_connections=200" \
      start >/dev/null; then
  cat "$_anomseg_pg_dir/server.log" >&2
  echo "ci: PostgreSQL did not start" >&2
  _anomseg_pg_stop
  return 1 2>/dev/null || exit 1
fi
trap _anomseg_pg_stop EXIT
_anomseg_pg createdb -h 127.0.0.1 -p "$_anomseg_pg_port" -U anomseg anomseg_test
export ANOMSEG_TEST_PG_URL="postgresql+psycopg2://anomseg@127.0.0.1:$_anomseg_pg_port/anomseg_test"
echo "ci: PostgreSQL on 127.0.0.1:$_anomseg_pg_port for the store tests"
