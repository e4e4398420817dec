#!/usr/bin/env bash
# Scale benchmark (not a test): a durable five-replica cluster on 127.0.0.1 loaded with N keys
# of 100 bytes through the client, then 64-client puts long enough for the leader to snapshot
# the whole map while they run. Reports the put latency percentiles, how many snapshots the
# leader took during the run (and how long they took), and whether the leader changed (leader
# id and ballot from `paxoskv status -w json` before and after).
#
# Usage: scripts/bench-scale.sh [--5m]      (--5m loads 5,000,000 keys instead of 1,000,000)
# Environment:
#   KEYS         keys to load (default 1000000; --5m sets 5000000)
#   LOAD_CLIENTS sessions loading at once (default 64)
#   CLIENTS      sessions of the measured puts (default 64)
#   DURATION     measured time (default 60s: a snapshot of 1M keys is due after ~120 MB of log)
#   BENCH_KEYS   distinct keys the measured puts write (default 100000)
#   SKIP_BUILD=1 uses the binaries already built; KEEP_DATA=1 keeps logs and data.
#   SERVER_BIN   another paxoskv-server (e.g. an older build, to compare)
#   SERVER_ARGS  extra arguments for every replica (split on spaces), e.g. "--snapshot-log-bytes N"
# Also prints the leader's slow steps during the run (driver turns, WAL persists >= 20 ms, as
# the server logs them) to attribute latency spikes.
# Exits non-zero if a step failed; leaves no process behind.
set -euo pipefail

readonly REPLICAS=5
readonly START_WAIT_S=60
readonly LEADER_WAIT_S=20
readonly STOP_WAIT_S=10

KEYS=${KEYS:-1000000}
LOAD_CLIENTS=${LOAD_CLIENTS:-64}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-60s}
BENCH_KEYS=${BENCH_KEYS:-100000}
read -r -a SERVER_ARGS <<<"${SERVER_ARGS:-}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SERVER=${SERVER_BIN:-$BIN/paxoskv-server}
CLIENT="$BIN/paxoskv"
TMP=""
PEERS=""
BASE_PORT=""
declare -a PID=()

log() { printf '[bench-scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    echo "bench-scale.sh: FAILED: $*" >&2
    exit 1
}
alive() { kill -0 "$1" 2>/dev/null; }

cleanup() {
    local code=$? pid
    set +e
    trap - EXIT INT TERM
    for pid in "${PID[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 1 $((STOP_WAIT_S * 10))); do
        local any=0
        for pid in "${PID[@]}"; do alive "$pid" && any=1; done
        [[ $any == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PID[@]}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
    for pid in "${PID[@]}"; do wait "$pid" 2>/dev/null; done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_DATA:-0} == 1 ]]; then log "logs and data kept in $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
# shellcheck source=scripts/lib-cluster.sh
source "$ROOT/scripts/lib-cluster.sh"

kv() { "$CLIENT" --servers "$PEERS" "$@"; }

# FIELD (a python expression over `v`) of the JSON object in $1.
json_get() { python3 -c 'import json, sys; v = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

start_cluster() {
    launch_replicas "$TMP" "${SERVER_ARGS[@]}"
    wait_for_leader
}

# "LEADER BALLOT" as the cluster reports it now.
leader_and_ballot() {
    local status
    status=$(kv --timeout 5s status -w json) || die "status failed"
    json_get "$status" '"%s %s" % (v["leader"], next((r["promised"] for r in v["replicas"] if r.get("id") == v["leader"]), "?"))'
}

# Lines of the leader's log between two timestamps that mention snapshots.
snapshot_lines() {
    grep -E "snapshot (started|durable)" "$TMP/replica-$1.log" || true
}

main() {
    case "${1:-}" in
    "") ;;
    --5m) KEYS=5000000 ;;
    *) die "unknown argument '$1' (usage: scripts/bench-scale.sh [--5m])" ;;
    esac
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building (cargo build --release -p paxoskv-server -p paxoskv-client)"
        (cd "$ROOT" && cargo build --release --quiet -p paxoskv-server -p paxoskv-client)
    fi
    [[ -x $SERVER && -x $CLIENT ]] || die "binaries missing in $BIN"
    command -v python3 >/dev/null || die "needs python3"
    pick_ports
    local i addrs=()
    for ((i = 0; i < REPLICAS; i++)); do addrs+=("127.0.0.1:$((BASE_PORT + i))"); done
    PEERS=$(IFS=,; echo "${addrs[*]}")
    TMP=$(mktemp -d -t paxoskv-scale.XXXXXX)
    log "cluster on $PEERS, data in $TMP"
    start_cluster

    log "loading $KEYS keys of 100 bytes with $LOAD_CLIENTS sessions"
    kv --timeout 30s prepopulate --count "$KEYS" --concurrency "$LOAD_CLIENTS" --value-bytes 100 \
        >"$TMP/load.out" || die "load failed: $(tail -n 5 "$TMP/load.out")"
    log "$(cat "$TMP/load.out")"
    local keys
    keys=$(kv --timeout 30s count "" 2>/dev/null || echo "? (server without count)")
    log "count \"\": $keys keys"

    local before after leader
    before=$(leader_and_ballot)
    leader=${before%% *}
    [[ $leader =~ ^[0-9]+$ ]] || die "no single leader before the run ($before)"
    local snaps_before
    snaps_before=$(snapshot_lines "$leader" | grep -c "snapshot started" || true)
    log "leader $before; $CLIENTS-client puts for $DURATION over $BENCH_KEYS keys"
    local out
    out=$(kv bench --workload put --clients "$CLIENTS" --duration "$DURATION" --warmup 2s \
        --keys "$BENCH_KEYS" --value-size 100 --json 2>"$TMP/bench.err") ||
        die "bench failed: $(tail -n 5 "$TMP/bench.err")"
    after=$(leader_and_ballot)
    local snaps_after
    snaps_after=$(snapshot_lines "$leader" | grep -c "snapshot started" || true)
    echo "$out" >"$TMP/bench.json"

    local l='v["latency_us"]["all"]'
    echo "scale run: $keys keys loaded ($(cat "$TMP/load.out"))"
    printf '%s-client puts for %s: %.0f ops/s, p50 %s us, p99 %s us, p99.9 %s us, max %s us, errors %s\n' \
        "$CLIENTS" "$DURATION" "$(json_get "$out" 'v["ops_per_s"]')" \
        "$(json_get "$out" "$l[\"p50\"]")" "$(json_get "$out" "$l[\"p99\"]")" \
        "$(json_get "$out" "$l[\"p999\"]")" "$(json_get "$out" "$l[\"max\"]")" \
        "$(json_get "$out" 'v["errors"]')"
    echo "snapshots started by the leader (replica $leader) during the run: $((snaps_after - snaps_before))"
    snapshot_lines "$leader" | tail -n $((2 * (snaps_after - snaps_before) + 1)) | cut -c1-200
    local slow
    slow=$(grep -cE "slow (driver turn|WAL persist)" "$TMP/replica-$leader.log" || true)
    echo "slow steps logged by the leader (>= 20 ms; whole run incl. load): $slow; the 5 slowest:"
    grep -E "slow (driver turn|WAL persist)" "$TMP/replica-$leader.log" |
        sed -E 's/^([^ ]+) .*(slow [a-zA-Z ]+): (.*)$/\1 \2 \3/' |
        awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^(took_ms|rest_ms|handled_ms)=/) { split($i, kv, "="); t += kv[2] } print t, $0; t = 0 }' |
        sort -rn | head -n 5 | cut -d' ' -f2- | cut -c1-200
    echo "snapshot push failures logged by the leader: $(grep -c "snapshot push failed" "$TMP/replica-$leader.log" || true)"
    if [[ $before == "$after" ]]; then
        echo "leader change: no (leader and ballot before and after: $before)"
    else
        echo "leader change: YES (before: $before, after: $after)"
    fi
}

main "$@"
