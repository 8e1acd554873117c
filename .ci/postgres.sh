#!/usr/bin/env bash
# Install and start a throw-away PostgreSQL on loopback for the many-machine sweep tests.
# Usage: source .ci/postgres.sh   (exports MLKIT_TEST_POSTGRES)
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" \
    "/etc/postgresql/$version/main/postgresql.conf"
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 30); do
    pg_isready -h 127.0.0.1 -q && break
    sleep 1
done
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
su postgres -c "psql -q -p $port -tc \"SELECT 1 FROM pg_roles WHERE rolname='mlkit'\"" | grep -q 1 ||
    su postgres -c "psql -q -p $port -c \"CREATE ROLE mlkit LOGIN PASSWORD 'mlkit-test-only'\""
su postgres -c "psql -q -p $port -tc \"SELECT 1 FROM pg_database WHERE datname='mlkit_test'\"" |
    grep -q 1 || su postgres -c "createdb -p $port -O mlkit mlkit_test"
export MLKIT_TEST_POSTGRES="postgresql://mlkit:mlkit-test-only@127.0.0.1:$port/mlkit_test"
echo "PostgreSQL $version on 127.0.0.1:$port (MLKIT_TEST_POSTGRES is set)"
