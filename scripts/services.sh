#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, database "test") and Redis (127.0.0.1:6379) are up:
# start whichever is down, then wait until both answer. Idempotent; exits 1 if a service is not
# installed or does not answer within WAIT_SECONDS.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
PG_TEST_DATABASE=test
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
REDIS_DIR=/var/lib/redis
REDIS_LOG=/var/log/redis/ci.log
WAIT_SECONDS=${WAIT_SECONDS:-30}

export PGCONNECT_TIMEOUT=5

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

wait_until() {  # wait_until NAME COMMAND...: retry COMMAND for up to WAIT_SECONDS
    local name=$1 deadline=$((SECONDS + WAIT_SECONDS))
    shift
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "$name did not answer within ${WAIT_SECONDS}s"
        fi
        sleep 1
    done
    log "$name is up"
}

# --- PostgreSQL -------------------------------------------------------------------------------
pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

for tool in pg_isready pg_ctlcluster psql createdb; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "PostgreSQL is not installed ($tool not found); install postgresql first"
done
pg_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_version" ] || die "PostgreSQL is not installed (no cluster under /etc/postgresql)"

if pg_ready; then
    log "PostgreSQL is already running"
else
    log "starting PostgreSQL $pg_version"
    # A failure here (e.g. started concurrently) is judged by the wait below.
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start \
        || log "pg_ctlcluster returned $?; waiting for PostgreSQL anyway"
fi
wait_until "PostgreSQL ($PG_HOST:$PG_PORT)" pg_ready

psql_admin=(psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tA)
exists=$("${psql_admin[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_TEST_DATABASE'") \
    || die "cannot connect to PostgreSQL as $PG_USER"
if [ "$exists" != "1" ]; then
    log "creating database $PG_TEST_DATABASE"
    createdb -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_TEST_DATABASE"
else
    log "database $PG_TEST_DATABASE exists"
fi

# --- Redis ------------------------------------------------------------------------------------
redis_ready() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "Redis is not installed ($tool not found); install redis-server first"
done

if redis_ready; then
    log "Redis is already running"
else
    log "starting Redis"
    mkdir -p "$REDIS_DIR" "$(dirname "$REDIS_LOG")"
    redis-server --daemonize yes --bind "$REDIS_HOST" -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$REDIS_DIR" --logfile "$REDIS_LOG" \
        || log "redis-server returned $?; waiting for Redis anyway"
fi
wait_until "Redis ($REDIS_HOST:$REDIS_PORT)" redis_ready
