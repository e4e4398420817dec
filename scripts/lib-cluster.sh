# shellcheck shell=bash
# Cluster start shared by scripts/bench-cluster.sh and scripts/bench-scale.sh (sourced, not run).
# The caller defines: REPLICAS, START_WAIT_S, LEADER_WAIT_S, SERVER, PEERS, the array PID, and
# the functions die, alive and kv (the client with --servers "$PEERS").

# Starts $REPLICAS replicas with data in DIR/data and logs in DIR/replica-I.log, any further
# arguments passed to every server; sets PID[I]. Returns once every replica logged that it runs.
launch_replicas() {
    local dir=$1 i deadline
    shift
    mkdir -p "$dir/data"
    for ((i = 0; i < REPLICAS; i++)); do
        "$SERVER" --replica "$i" --peers "$PEERS" --data-dir "$dir/data" "$@" </dev/null \
            >"$dir/replica-$i.log" 2>&1 &
        PID[i]=$!
    done
    for ((i = 0; i < REPLICAS; i++)); do
        deadline=$((SECONDS + START_WAIT_S))
        until grep -q "Replica $i is running" "$dir/replica-$i.log"; do
            alive "${PID[i]}" || die "replica $i exited at start: $(tail -n 20 "$dir/replica-$i.log")"
            ((SECONDS < deadline)) || die "replica $i not running after ${START_WAIT_S}s"
            sleep 0.1
        done
    done
}

# Waits (at most $LEADER_WAIT_S) until the cluster reports a leader.
wait_for_leader() {
    local deadline=$((SECONDS + LEADER_WAIT_S))
    until kv --timeout 2s status -w simple 2>/dev/null | grep -q ' role=leader '; do
        ((SECONDS < deadline)) || die "no leader after ${LEADER_WAIT_S}s"
        sleep 0.2
    done
}
