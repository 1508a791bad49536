# shellcheck shell=bash
# Shared helpers for scripts/test, scripts/example and .ci/run. Source it; don't run it.

# Make sure a PostgreSQL server and pg_virtualenv (postgresql-common) are installed.
# Installs the Debian `postgresql` package when we are root with apt-get; otherwise fails loudly.
ensure_postgres() {
    if command -v pg_virtualenv >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        return 0
    fi
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        echo ">> PostgreSQL not found; installing the 'postgresql' package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends postgresql
        return 0
    fi
    echo "error: PostgreSQL (pg_virtualenv from postgresql-common) is not installed and cannot be installed" >&2
    echo "       automatically (needs root and apt-get). Install it with 'apt-get install postgresql'," >&2
    echo "       or point PGHOST/PGPORT/PGUSER/PGPASSWORD at an existing server." >&2
    exit 1
}

# If PGHOST is unset, re-run the calling script inside a throwaway cluster
# (`pg_virtualenv -t` exports PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, and
# drops the cluster on exit, passing the exit status through). Returns if PGHOST is set.
# Usage: with_postgres "$@"   (from the top level of a script)
with_postgres() {
    if [[ -n ${PGHOST:-} ]]; then
        echo ">> using PostgreSQL server at ${PGHOST}:${PGPORT:-5432}" >&2
        return 0
    fi
    ensure_postgres
    echo ">> starting a throwaway PostgreSQL cluster (pg_virtualenv -t)" >&2
    exec pg_virtualenv -t "$(realpath "$0")" "$@"
}
