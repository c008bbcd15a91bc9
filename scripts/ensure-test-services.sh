#!/usr/bin/env bash
# Make sure the servers the tests talk to are on this machine (called by `make test`):
#   - redis-server: the tests start Redis instances of their own, so only the binary is needed;
#   - PostgreSQL answering on 127.0.0.1:5432 with a database "test" (trust auth for loopback).
# Installs what is missing with apt (Debian/Ubuntu) and starts a stopped cluster. Safe to rerun.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
fresh_postgres=0
if ! port_open 5432 && ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    missing+=(postgresql)
    fresh_postgres=1
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} for the tests (apt)"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if ! port_open 5432; then
    for cluster in /etc/postgresql/*/main; do
        version=$(basename "$(dirname "$cluster")")
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do port_open 5432 && break; sleep 0.5; done
fi

if [ "$fresh_postgres" = 1 ]; then
    # A cluster we just installed: let loopback connect without a password, as the tests do,
    # and create their database.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
    for cluster in /etc/postgresql/*/main; do
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$cluster")")" main reload
    done
    if [ -z "$SUDO" ]; then
        runuser -u postgres -- createdb test 2>/dev/null || true
    else
        sudo -u postgres createdb test 2>/dev/null || true
    fi
fi

port_open 5432 || echo "warning: no PostgreSQL on 127.0.0.1:5432; the Postgres tests will skip" >&2
