#!/usr/bin/env bash
# Make sure the Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) the tests use answer.
#
# Starts whichever is down, when its server is installed here (as on the project's
# machines and CI), then waits for both, a bounded time. Used by `make test` and .ci/run.
set -euo pipefail

WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-30}"

say() { echo "services: $*"; }

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else  # no client: speak the protocol through bash's /dev/tcp
    local reply
    reply="$( { exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 \
                && read -r -t 2 line <&3 && echo "$line"; } 2>/dev/null )" || return 1
    [ "${reply%$'\r'}" = "+PONG" ]
  fi
}

postgres_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -h 127.0.0.1 -p 5432 -q
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

start_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    say "Redis is not answering on 127.0.0.1:6379 and redis-server is not installed"
    return 0
  fi
  mkdir -p /var/lib/redis /var/log/redis
  say "Redis is not answering on 127.0.0.1:6379: starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then
    say "PostgreSQL is not answering on 127.0.0.1:5432 and no cluster is installed here"
    return 0
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  say "PostgreSQL is not answering on 127.0.0.1:5432: starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

wait_for() {
  local name="$1" check="$2" hint="$3" waited=0
  until "$check"; do
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
      echo "services: $name did not answer within ${WAIT_SECONDS}s. $hint" >&2
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  say "$name is up"
}

if redis_up; then say "Redis already answering on 127.0.0.1:6379"; else start_redis; fi
if postgres_up; then say "PostgreSQL already answering on 127.0.0.1:5432"; else start_postgres; fi
wait_for Redis redis_up "Start it yourself, or see /var/log/redis/ci.log."
wait_for PostgreSQL postgres_up "Start it yourself, or see /var/log/postgresql/."
