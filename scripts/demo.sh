#!/usr/bin/env bash
# End-to-end demo of paxoskv on this machine:
#   five replica processes with failure injection (-f), the client's checked demo, kill -9 of
#   the leader, PUT/GET/DELETE through the failover, a new leader, restart of the killed
#   replica and its catch-up, then the number of injected failures. Every replica serves
#   metrics and the live dashboard (--metrics-addr); its URL is printed after the start.
# Usage: scripts/demo.sh [--tls] [--pause]
#   --tls: certificates from `paxoskv-server gen-certs` in the temporary directory; replicas
#          talk TLS to each other and require client certificates; every client step uses
#          --cacert/--cert/--key, and a client without a certificate is shown to be refused.
#   --pause: wait for Enter once the dashboard is up (open it, then watch the kill) and again
#          before stopping, so the cluster can be looked at.
# Environment: PORT=first of five consecutive ports (default: a free block at random),
#              METRICS_PORT=first of five metrics/dashboard ports (default: likewise),
#              KEEP_DATA=1 keeps the temporary data/log directory.
# Exits non-zero if any step fails; leaves no process behind.
set -euo pipefail

readonly REPLICAS=5
readonly START_WAIT_S=10
readonly FAILOVER_WAIT_S=15
readonly CATCHUP_WAIT_S=30

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SERVER="$BIN/paxoskv-server"
CLIENT="$BIN/paxoskv"
DATA=""
PEERS=""
METRICS_PEERS=""
METRICS_BASE=""
TLS=0
PAUSE=0
CERTS=""
declare -a PID=() LOG=()

say() { printf '\n=== %s\n' "$*"; }
die() {
    echo "demo.sh: FAILED: $*" >&2
    exit 1
}

alive() { kill -0 "$1" 2>/dev/null; }

# Kills every replica this script started (TERM, then KILL after a short wait) and removes
# the temporary directory. Runs on every exit.
cleanup() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in "${PID[@]}"; do kill "$pid" 2>/dev/null; done
    for _ in $(seq 1 30); do
        local any=0
        for pid in "${PID[@]}"; do alive "$pid" && any=1; done
        [[ $any == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PID[@]}"; do alive "$pid" && kill -9 "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [[ -n $DATA && -d $DATA ]]; then
        if [[ ${KEEP_DATA:-0} == 1 ]]; then
            echo "demo.sh: data and logs kept in $DATA"
        else
            rm -rf "$DATA"
        fi
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"

kv() { "$CLIENT" --servers "$PEERS" --timeout 10s "${TLS_CLIENT[@]}" "$@"; }
declare -a TLS_CLIENT=()

# Starts replica $1; its log goes to $DATA/replica-$1.run<N>.log.
start_replica() {
    local i=$1 run=1
    while [[ -e $DATA/replica-$i.run$run.log ]]; do run=$((run + 1)); done
    LOG[i]="$DATA/replica-$i.run$run.log"
    local args=(--replica "$i" --peers "$PEERS" -f)
    args+=(--metrics-addr "127.0.0.1:$((METRICS_BASE + i))" --dashboard-peers "$METRICS_PEERS")
    [[ $TLS == 1 ]] && args+=(--tls-dir "$CERTS")
    if [[ $DATA_DIR_FLAG == 1 ]]; then
        # The server keeps replica I's state in DIR/replica-I.
        mkdir -p "$DATA/data"
        args+=(--data-dir "$DATA/data")
    fi
    "$SERVER" "${args[@]}" >"${LOG[i]}" 2>&1 &
    PID[i]=$!
}

# Waits until replica $1 logged that it is running.
wait_running() {
    local i=$1 deadline=$((SECONDS + START_WAIT_S))
    until grep -q "Replica $i is running" "${LOG[i]}"; do
        alive "${PID[i]}" || die "replica $i exited at start; log: $(tail -n 20 "${LOG[i]}")"
        ((SECONDS < deadline)) || die "replica $i not running after ${START_WAIT_S}s; log: $(tail -n 20 "${LOG[i]}")"
        sleep 0.1
    done
    grep -m1 "Replica $i is running" "${LOG[i]}"
}

# Value of NAME=VALUE in a status line (values contain no spaces, except the last field).
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

status_lines() { kv status -w simple 2>&1 || true; }

# Id of the replica that reports role=leader and that the most replicas name as leader.
current_leader() {
    local lines
    lines=$(status_lines)
    local line id
    while IFS= read -r line; do
        [[ $line == *" role=leader "* ]] || continue
        id=$(field "$line" id)
        [[ -n $id ]] && {
            echo "$id"
            return 0
        }
    done <<<"$lines"
    return 1
}

# Milliseconds since the epoch.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Runs `paxoskv ARGS...` and checks its output and exit status.
expect() {
    local want_code=$1 want=$2 out code=0 started
    shift 2
    started=$(now_ms)
    out=$(kv "$@" 2>&1) || code=$?
    printf '$ paxoskv %s    # %d ms\n%s\n' "$*" $(($(now_ms) - started)) "$out"
    [[ $code == "$want_code" && $out == "$want" ]] ||
        die "paxoskv $*: expected '$want' (exit $want_code), got '$out' (exit $code)"
}

# Sets METRICS_BASE: $METRICS_PORT if given, else a free block apart from the replica ports
# (pick_ports of ports.sh, kept off BASE_PORT's block).
pick_metrics_ports() {
    local replica_base=$BASE_PORT try
    for try in $(seq 1 50); do
        PORT=${METRICS_PORT:-} pick_ports
        METRICS_BASE=$BASE_PORT
        BASE_PORT=$replica_base
        ((METRICS_BASE + REPLICAS <= BASE_PORT || METRICS_BASE >= BASE_PORT + REPLICAS)) && return
        [[ -z ${METRICS_PORT:-} ]] || die "METRICS_PORT=$METRICS_PORT overlaps the replica ports $BASE_PORT..$((BASE_PORT + REPLICAS - 1))"
    done
    die "no free block of $REPLICAS metrics ports apart from the replica ports after $try tries"
}

# With --pause: waits for Enter (or end of input) with prompt $1.
pause() {
    [[ $PAUSE == 1 ]] || return 0
    read -r -p "$1 [Enter] " _ || true
}

main() {
    local arg
    for arg in "$@"; do
        case "$arg" in
        --tls) TLS=1 ;;
        --pause) PAUSE=1 ;;
        *) die "unknown argument '$arg' (usage: scripts/demo.sh [--tls] [--pause])" ;;
        esac
    done
    say "building in release mode, first time ~3 min (cargo build --release --workspace)"
    # Not --quiet: cargo's "Compiling ..." lines are the sign of life during a cold build.
    (cd "$ROOT" && cargo build --release --workspace)
    [[ -x $SERVER && -x $CLIENT ]] || die "binaries missing in $BIN"

    DATA_DIR_FLAG=0
    if "$SERVER" --help 2>&1 | grep -q -- --data-dir; then DATA_DIR_FLAG=1; fi

    pick_ports
    local i addrs=()
    for ((i = 0; i < REPLICAS; i++)); do addrs+=("127.0.0.1:$((BASE_PORT + i))"); done
    PEERS=$(
        IFS=,
        echo "${addrs[*]}"
    )
    pick_metrics_ports
    local maddrs=()
    for ((i = 0; i < REPLICAS; i++)); do maddrs+=("127.0.0.1:$((METRICS_BASE + i))"); done
    METRICS_PEERS=$(
        IFS=,
        echo "${maddrs[*]}"
    )
    DATA=$(mktemp -d -t paxoskv-demo.XXXXXX)
    if [[ $TLS == 1 ]]; then
        CERTS="$DATA/certs"
        say "certificates: paxoskv-server gen-certs --dir $CERTS --hosts 127.0.0.1"
        "$SERVER" gen-certs --dir "$CERTS" --hosts 127.0.0.1 --replicas "$REPLICAS" >/dev/null
        ls "$CERTS"
        TLS_CLIENT=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client.pem" --key "$CERTS/client-key.pem")
    fi

    say "starting $REPLICAS replicas with failure injection on $PEERS (logs in $DATA)"
    for ((i = 0; i < REPLICAS; i++)); do start_replica "$i"; done
    for ((i = 0; i < REPLICAS; i++)); do wait_running "$i"; done
    say "dashboard: http://127.0.0.1:$METRICS_BASE/  (live; every replica's metrics port serves it, /metrics for Prometheus)"
    [[ $PAUSE == 1 ]] || echo "(run scripts/demo.sh --pause to keep the cluster up while you watch)"
    pause "open the dashboard, then continue to the demo and the kill of the leader"

    if [[ $TLS == 1 ]]; then
        say "a client without a certificate is refused"
        local out code=0
        out=$("$CLIENT" --servers "$PEERS" --cacert "$CERTS/ca.pem" get anything 2>&1) || code=$?
        printf '$ paxoskv --cacert %s get anything\n%s\n' "$CERTS/ca.pem" "$out"
        [[ $code == 2 && $out == *"unauthenticated: a client certificate"* ]] ||
            die "a client without a certificate was not refused (exit $code): $out"
    fi

    say "client demo"
    kv demo || die "client demo failed"

    say "cluster status"
    kv status || die "status failed"
    local leader
    leader=$(current_leader) || die "no leader after the demo"
    echo "leader is replica $leader (pid ${PID[leader]})"

    say "kill -9 of the leader, replica $leader"
    kill -9 "${PID[leader]}"
    wait "${PID[leader]}" 2>/dev/null || true
    unset "PID[leader]"

    say "operations during the failover"
    expect 0 "OK" put failover-key "written after the leader died"
    expect 0 "written after the leader died" get failover-key
    expect 0 "OK" put failover-key "overwritten after the leader died"
    expect 0 "overwritten after the leader died" get failover-key
    expect 0 "OK" delete failover-key
    expect 1 "not found: failover-key" get failover-key
    expect 0 "OK (key did not exist)" delete failover-key
    expect 0 "OK" put survivor "kept for the restarted replica"

    say "waiting for a new leader"
    local new_leader="" deadline=$((SECONDS + FAILOVER_WAIT_S))
    while ((SECONDS < deadline)); do
        new_leader=$(current_leader) || new_leader=""
        [[ -n $new_leader && $new_leader != "$leader" ]] && break
        sleep 0.2
    done
    [[ -n $new_leader && $new_leader != "$leader" ]] || die "no new leader within ${FAILOVER_WAIT_S}s"
    kv status || true
    echo "new leader: replica $new_leader (was $leader)"

    say "restarting replica $leader"
    start_replica "$leader"
    wait_running "$leader"
    wait_caught_up "$leader"
    wait_converged
    kv status || die "status failed"
    expect 0 "kept for the restarted replica" get survivor

    say "watch: every change of a prefix, in order, from a revision"
    local rev wfile="$DATA/watch.out" wpid
    rev=$(kv -w json get survivor | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
    [[ -n $rev ]] || die "no store revision from get -w json"
    kv watch demo-watch/ --from-revision $((rev + 1)) --max-events 3 --idle-exit 30s >"$wfile" 2>&1 &
    wpid=$!
    expect 0 "OK" put demo-watch/a 1
    expect 0 "OK" put demo-watch/b 2
    expect 0 "OK" delete demo-watch/a
    wait "$wpid" || die "paxoskv watch failed: $(cat "$wfile")"
    printf '$ paxoskv watch demo-watch/ --from-revision %d --max-events 3\n%s\n' $((rev + 1)) "$(cat "$wfile")"
    [[ $(cat "$wfile") == "$((rev + 1)) PUT demo-watch/a 1
$((rev + 2)) PUT demo-watch/b 2
$((rev + 3)) DELETE demo-watch/a" ]] || die "watch printed something else"

    say "lease: a key that goes when its lease is not kept alive"
    local lease out started
    lease=$(kv lease grant 2s) || die "lease grant failed"
    echo "\$ paxoskv lease grant 2s"$'\n'"$lease"
    out=$(kv put demo-lease "until the lease ends" --if-absent --lease "$lease") || die "leased put failed: $out"
    echo "\$ paxoskv put demo-lease 'until the lease ends' --if-absent --lease $lease"$'\n'"$out"
    expect 0 "lease $lease kept alive for 2s" lease keepalive "$lease" --once
    started=$(now_ms)
    out=$(kv lease ttl "$lease") || die "lease ttl failed: $out"
    echo "\$ paxoskv lease ttl $lease"$'\n'"$out"
    [[ $out == "lease $lease: TTL 2s, "*" left, 1 key" ]] || die "lease ttl: unexpected '$out'"
    expect 0 "until the lease ends" get demo-lease
    local deadline=$((SECONDS + 20))
    while kv get demo-lease >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "the leased key outlived its lease by far"
        sleep 0.1
    done
    echo "demo-lease expired $(($(now_ms) - started)) ms after the last keepalive was acknowledged"
    expect 1 "not found: demo-lease" get demo-lease

    say "injected failures"
    local dropped=0 line d
    while IFS= read -r line; do
        d=$(field "$line" dropped)
        [[ -n $d ]] && dropped=$((dropped + d))
    done <<<"$(status_lines)"
    echo "messages dropped by failure injection (sum over replicas since their last start): $dropped"

    pause "all steps passed; the cluster stays up until you continue"
    say "stopping"
    echo "demo.sh: all steps passed"
}

# Waits until replica $1's applied_through reaches the leader's.
wait_caught_up() {
    local i=$1 deadline=$((SECONDS + CATCHUP_WAIT_S)) lines line mine="" theirs=""
    while ((SECONDS < deadline)); do
        lines=$(status_lines)
        mine="" theirs=""
        while IFS= read -r line; do
            [[ $(field "$line" id) == "$i" ]] && mine=$(field "$line" applied_through)
            [[ $line == *" role=leader "* ]] && theirs=$(field "$line" applied_through)
        done <<<"$lines"
        if [[ -n $mine && -n $theirs ]] && ((mine >= theirs)); then
            echo "replica $i caught up: applied_through=$mine (leader: $theirs)"
            return 0
        fi
        sleep 0.2
    done
    die "replica $i did not catch up within ${CATCHUP_WAIT_S}s (applied_through=${mine:-?}, leader ${theirs:-?})"
}

# Waits until every replica answers with the same applied_through and map digest.
wait_converged() {
    local deadline=$((SECONDS + CATCHUP_WAIT_S)) states=""
    while ((SECONDS < deadline)); do
        states=$(status_lines | grep '^id=' | while IFS= read -r line; do
            echo "applied_through=$(field "$line" applied_through) digest=$(field "$line" digest)"
        done | sort | uniq -c)
        if [[ $(wc -l <<<"$states") == 1 && $states == *" $REPLICAS applied_through="* ]]; then
            echo "all $REPLICAS replicas agree:${states#*"$REPLICAS"}"
            return 0
        fi
        sleep 0.2
    done
    die "replicas did not converge within ${CATCHUP_WAIT_S}s: $states"
}

main "$@"
