#!/usr/bin/env bash
# Starts the local PostgreSQL and Redis when they are not answering (the machine's own commands).
set -euo pipefail

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL" >&2
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)"
    # Exit status 2: it is running already, still starting up or recovering; the wait below
    # decides.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || [ $? -eq 2 ]
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0
    sleep 0.2
done
echo "PostgreSQL or Redis did not come up" >&2
exit 1
