#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, pg_ctl, postgres) for the PostgreSQL store tests, from
# Debian's packages. The tests start their own throwaway cluster (tests/postgres/pg_cluster.py);
# nothing is started here. Idempotent: does nothing when the binaries are already there.
set -euo pipefail

have_server() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    return 0
  fi
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

if have_server; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "postgres.sh: PostgreSQL server binaries not found and no apt-get; install PostgreSQL (initdb, pg_ctl)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# postgresql-common would create and start a "main" cluster on install: the tests do not use it.
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/lossproof.conf >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_server || { echo "postgres.sh: installed postgresql but initdb/pg_ctl are still missing" >&2; exit 1; }
