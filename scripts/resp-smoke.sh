#!/usr/bin/env bash
# Smoke run of the Redis protocol front end: five in-memory replicas in one process with
# --resp-port, redis-cli PING until the RESP port answers, then
# `redis-benchmark -t set,get -n $REQUESTS -c 10` (and -P 16) against it. Passes when
# redis-benchmark exits 0 and a key it wrote reads back (by GET, KEYS, SCAN, DBSIZE); no
# speed is asserted.
# Usage: scripts/resp-smoke.sh   (needs redis-tools; release build of paxoskv-server)
# Environment: REQUESTS (default 2000).
set -euo pipefail

readonly REPLICAS=5
readonly START_WAIT_S=20
readonly REQUESTS=${REQUESTS:-2000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER="${CARGO_TARGET_DIR:-$ROOT/target}/release/paxoskv-server"
PID=""
LOG=$(mktemp /tmp/paxoskv-resp-smoke.XXXXXX)

die() {
    echo "resp-smoke.sh: FAILED: $*" >&2
    [[ -s $LOG ]] && tail -20 "$LOG" >&2
    exit 1
}
cleanup() {
    if [[ -n $PID ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -f "$LOG"
}
trap cleanup EXIT

# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
[[ -x $SERVER ]] || die "$SERVER missing: cargo build --release -p paxoskv-server"
command -v redis-benchmark >/dev/null || die "redis-benchmark missing: apt-get install redis-tools"
pick_ports
REPLICA_PORT=$BASE_PORT
pick_ports
RESP_PORT=$BASE_PORT
[[ $RESP_PORT -ge $((REPLICA_PORT + REPLICAS)) || $((RESP_PORT + REPLICAS)) -le $REPLICA_PORT ]] ||
    die "port blocks overlap; run again"

"$SERVER" "$REPLICA_PORT" --in-memory --resp-port "$RESP_PORT" >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 1 $((START_WAIT_S * 10))); do
    redis-cli -p "$RESP_PORT" PING 2>/dev/null | grep -q PONG && break
    kill -0 "$PID" 2>/dev/null || die "paxoskv-server exited"
    sleep 0.1
done
redis-cli -p "$RESP_PORT" PING | grep -q PONG || die "RESP port $RESP_PORT does not answer"

redis-benchmark -p "$RESP_PORT" -t set,get -n "$REQUESTS" -c 10 -q || die "redis-benchmark failed"
redis-benchmark -p "$RESP_PORT" -t set,get -n "$REQUESTS" -c 10 -P 16 -q || die "redis-benchmark -P 16 failed"
# redis-benchmark (without -r) writes the one key key:__rand_int__ with a 3-byte value:
# read it back through another replica.
value=$(redis-cli -p $((RESP_PORT + 1)) GET key:__rand_int__)
[[ ${#value} -eq 3 ]] || die "the benchmark's key did not read back (got '$value')"
# The ordered map through RESP: the benchmark's one key, found by KEYS, SCAN and DBSIZE.
[[ $(redis-cli -p "$RESP_PORT" KEYS 'key:*') == "key:__rand_int__" ]] || die "KEYS key:* wrong"
[[ $(redis-cli -p "$RESP_PORT" --scan --pattern 'key:*') == "key:__rand_int__" ]] || die "SCAN wrong"
[[ $(redis-cli -p "$RESP_PORT" DBSIZE) -ge 1 ]] || die "DBSIZE wrong"
echo "resp-smoke.sh: OK (redis-benchmark -n $REQUESTS against RESP port $RESP_PORT)"
