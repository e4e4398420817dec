#!/usr/bin/env bash
# Benchmarks a local five-replica paxoskv cluster (one process per replica, durable, on
# 127.0.0.1) with `paxoskv bench`: put with 1 client, put / get / mixed with $CLIENTS clients,
# each on a fresh cluster (stopped, data wiped, restarted in between), then the failover time
# (kill -9 of the leader while one session writes). Prints one Markdown table on stdout and the
# failover figure after it; progress goes to stderr.
#
# Usage: scripts/bench-cluster.sh [--tls]
#   --tls: certificates from `paxoskv-server gen-certs`; replicas talk TLS to each other and
#          the bench clients connect with client certificates (to measure the TLS cost).
# Environment:
#   DURATION   measured time per workload (default 10s)
#   WARMUP     unmeasured load before it (default 2s)
#   CLIENTS    sessions of the multi-client workloads (default 64)
#   PORT       first of five consecutive ports (default: a free block at random)
#   WORKLOADS  which runs, in order (default "put1 put get mixed failover")
#   SKIP_BUILD=1 uses the binaries already in target/release; KEEP_DATA=1 keeps logs/data.
#   METRICS=1  each replica also serves --metrics-addr on a free loopback port, scraped once
#              per second during the runs (to measure the cost of metrics).
# Exits non-zero if a run failed; leaves no process behind.
set -euo pipefail

readonly REPLICAS=5
readonly START_WAIT_S=20
readonly LEADER_WAIT_S=20
readonly STOP_WAIT_S=5
readonly PORT_WAIT_S=10

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CLIENTS=${CLIENTS:-64}
WORKLOADS=${WORKLOADS:-put1 put get mixed failover}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SERVER="$BIN/paxoskv-server"
CLIENT="$BIN/paxoskv"
TMP=""
RUN_DIR=""
PEERS=""
BASE_PORT=""
FAILED=0
TLS=0
declare -a PID=() ROWS=() NOTES=() TLS_SERVER=() TLS_CLIENT=() METRICS_SERVER=()
SCRAPER=""
readonly SCRAPE_INTERVAL_S=1

log() { printf '[bench-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    echo "bench-cluster.sh: FAILED: $*" >&2
    exit 1
}

alive() { kill -0 "$1" 2>/dev/null; }

# Stops every replica of the current cluster: TERM, a bounded wait, then KILL.
stop_replicas() {
    local pid any
    for pid in "${PID[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 $((STOP_WAIT_S * 10))); do
        any=0
        for pid in "${PID[@]}"; do alive "$pid" && any=1; done
        [[ $any == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PID[@]}"; do
        if alive "$pid"; then
            log "replica pid $pid ignored TERM; KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${PID[@]}"; do wait "$pid" 2>/dev/null || true; done
    PID=()
}

# Runs on every exit: stops everything this script started and removes its directory.
cleanup() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    stop_scraper
    stop_replicas
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_DATA:-0} == 1 ]]; then
            log "logs and data kept in $TMP"
        else
            rm -rf "$TMP"
        fi
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

kv() { "$CLIENT" --servers "$PEERS" "${TLS_CLIENT[@]}" "$@"; }

# Starts a fresh cluster in a new directory under $TMP and waits until it has a leader.
start_cluster() {
    local name=$1 i deadline
    RUN_DIR="$TMP/$name"
    mkdir -p "$RUN_DIR/data"
    deadline=$((SECONDS + PORT_WAIT_S))
    until block_free "$BASE_PORT"; do
        ((SECONDS < deadline)) || die "ports $BASE_PORT.. still busy after ${PORT_WAIT_S}s"
        sleep 0.2
    done
    launch_replicas "$RUN_DIR" "${TLS_SERVER[@]}" "${METRICS_SERVER[@]}"
    for ((i = 0; i < REPLICAS; i++)); do echo "${PID[i]}" >"$TMP/pids/$((BASE_PORT + i))"; done
    wait_for_leader
    [[ ${METRICS:-0} == 1 ]] && start_scraper
    return 0
}

# Scrapes every replica's /metrics once per second in the background (METRICS=1), as a
# Prometheus server would (more often than its default 15 s, to show any cost).
start_scraper() {
    local urls=() i addr
    command -v curl >/dev/null || die "METRICS=1 needs curl"
    for ((i = 0; i < REPLICAS; i++)); do
        addr=$(sed -n 's|^Metrics at http://\([^/]*\)/metrics.*|\1|p' "$RUN_DIR/replica-$i.log")
        [[ -n $addr ]] || die "replica $i printed no metrics address"
        urls+=("http://$addr/metrics")
    done
    (
        while true; do
            for url in "${urls[@]}"; do curl -s -o /dev/null --max-time 2 "$url" || true; done
            sleep "$SCRAPE_INTERVAL_S"
        done
    ) &
    SCRAPER=$!
}

stop_scraper() {
    if [[ -n $SCRAPER ]]; then
        kill "$SCRAPER" 2>/dev/null || true
        wait "$SCRAPER" 2>/dev/null || true
        SCRAPER=""
    fi
}

stop_cluster() {
    stop_scraper
    stop_replicas
    [[ ${KEEP_DATA:-0} == 1 ]] || rm -rf "$RUN_DIR"
}

# Prints FIELD of the JSON object in $1 (jq path like .latency_us.all.p50).
json_get() {
    if command -v jq >/dev/null; then
        jq -r "$2" <<<"$1"
    else
        python3 -c '
import json, sys
v = json.loads(sys.argv[1])
for part in sys.argv[2].lstrip(".").split("."):
    v = v[part]
print(v)' "$1" "$2"
    fi
}

ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'; }

# One bench run on a fresh cluster; appends a table row.
run_bench() {
    local name=$1 workload=$2 clients=$3 out code=0
    log "$name: fresh cluster on $PEERS"
    start_cluster "$name"
    log "$name: bench --workload $workload --clients $clients --duration $DURATION --warmup $WARMUP"
    out=$(kv bench --workload "$workload" --clients "$clients" \
        --duration "$DURATION" --warmup "$WARMUP" --json 2>"$RUN_DIR/bench.err") || code=$?
    if [[ $code != 0 || -z $out ]]; then
        log "$name: bench failed (exit $code): $(tail -n 5 "$RUN_DIR/bench.err")"
        ROWS+=("| $workload | $clients | FAILED | | | | | |")
        FAILED=1
    else
        echo "$out" >"$TMP/$name.json"
        local l=.latency_us.all
        ROWS+=("$(printf '| %s | %s | %.0f | %s | %s | %s | %s | %s |' "$workload" "$clients" \
            "$(json_get "$out" .ops_per_s)" \
            "$(ms "$(json_get "$out" $l.p50)")" "$(ms "$(json_get "$out" $l.p99)")" \
            "$(ms "$(json_get "$out" $l.p999)")" "$(ms "$(json_get "$out" $l.max)")" \
            "$(json_get "$out" .errors)")")
        log "$name: $(json_get "$out" .ops_per_s) ops/s, $(json_get "$out" .errors) errors"
    fi
    stop_cluster
}

# kill -9 of the leader while one session writes; appends the figure to the notes.
run_failover() {
    local out code=0
    log "failover: fresh cluster on $PEERS"
    start_cluster failover
    # The pid of the replica on port P is in $TMP/pids/P.
    out=$(kv bench-failover --json \
        --kill-cmd "kill -9 \"\$(cat '$TMP/pids/{port}')\"" 2>"$RUN_DIR/failover.err") || code=$?
    if [[ $code != 0 || -z $out ]]; then
        log "failover: failed (exit $code): $(tail -n 5 "$RUN_DIR/failover.err")"
        NOTES+=("failover: FAILED")
        FAILED=1
    else
        echo "$out" >"$TMP/failover.json"
        NOTES+=("$(printf 'failover (kill -9 of the leader, replica %s): first write acknowledged %s ms after the leader was killed (%s writes of at most %s ms failed in between; new leader: replica %s)' \
            "$(json_get "$out" .old_leader_id)" "$(json_get "$out" .failover_ms)" \
            "$(json_get "$out" .failed_writes)" "$(json_get "$out" .write_timeout_ms)" \
            "$(json_get "$out" .new_leader_id)")")
        log "${NOTES[-1]}"
    fi
    stop_cluster
}

main() {
    case "${1:-}" in
    "") ;;
    --tls) TLS=1 ;;
    *) die "unknown argument '$1' (usage: scripts/bench-cluster.sh [--tls])" ;;
    esac
    [[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive number, got '$CLIENTS'"
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building (cargo build --release -p paxoskv-server -p paxoskv-client)"
        (cd "$ROOT" && cargo build --release --quiet -p paxoskv-server -p paxoskv-client)
    fi
    [[ -x $SERVER && -x $CLIENT ]] || die "binaries missing in $BIN"
    command -v jq >/dev/null || command -v python3 >/dev/null || die "needs jq or python3"

    pick_ports
    local i addrs=()
    for ((i = 0; i < REPLICAS; i++)); do addrs+=("127.0.0.1:$((BASE_PORT + i))"); done
    PEERS=$(
        IFS=,
        echo "${addrs[*]}"
    )
    TMP=$(mktemp -d -t paxoskv-bench.XXXXXX)
    mkdir -p "$TMP/pids"
    if [[ $TLS == 1 ]]; then
        "$SERVER" gen-certs --dir "$TMP/certs" --replicas "$REPLICAS" >/dev/null
        TLS_SERVER=(--tls-dir "$TMP/certs")
        TLS_CLIENT=(--cacert "$TMP/certs/ca.pem" --cert "$TMP/certs/client.pem" --key "$TMP/certs/client-key.pem")
        log "TLS on: certificates in $TMP/certs"
    fi

    if [[ ${METRICS:-0} == 1 ]]; then
        METRICS_SERVER=(--metrics-addr 127.0.0.1:0)
        log "metrics on: each replica serves /metrics, scraped every ${SCRAPE_INTERVAL_S}s"
    fi

    local w
    for w in $WORKLOADS; do
        case $w in
        put1) run_bench put1 put 1 ;;
        put) run_bench "put$CLIENTS" put "$CLIENTS" ;;
        get) run_bench "get$CLIENTS" get "$CLIENTS" ;;
        mixed) run_bench "mixed$CLIENTS" mixed "$CLIENTS" ;;
        failover) run_failover ;;
        *) die "unknown workload '$w' (known: put1 put get mixed failover)" ;;
        esac
    done

    echo
    local transport="plaintext"
    [[ $TLS == 1 ]] && transport="TLS (peers and clients, client certificates)"
    echo "paxoskv, $REPLICAS replicas (one process each, fsync per batch, $transport), ${DURATION} measured after ${WARMUP} warm-up, 16-byte keys, 100-byte values, 1000 keys"
    echo
    echo "| workload | clients | ops/s | p50 | p99 | p99.9 | max | errors |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    local row
    for row in "${ROWS[@]}"; do echo "$row"; done
    echo
    for row in "${NOTES[@]}"; do echo "$row"; done
    return "$FAILED"
}

main "$@"
