# shellcheck shell=bash
# Shared by demo.sh and bench-cluster.sh (sourced, not run): finding a block of free
# loopback ports. Expects REPLICAS and a `die` function; sets BASE_PORT.

# True if nothing listens on (or holds) 127.0.0.1:$1.
port_free() {
    if command -v python3 >/dev/null; then
        python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is fine
s.bind(("127.0.0.1", int(sys.argv[1])))
s.close()
PY
    elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        return 1 # something accepted a connection
    fi
}

# True if the REPLICAS ports from $1 on are all free.
block_free() {
    local i
    for ((i = 0; i < REPLICAS; i++)); do port_free $(($1 + i)) || return 1; done
}

# Sets BASE_PORT: $PORT if given, else a free block at a random base in 20000-40000.
pick_ports() {
    if [[ -n ${PORT:-} ]]; then
        [[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
        block_free "$PORT" || die "ports $PORT..$((PORT + REPLICAS - 1)) are not all free"
        BASE_PORT=$PORT
        return
    fi
    local try
    for try in $(seq 1 50); do
        BASE_PORT=$((20000 + (RANDOM * 32768 + RANDOM) % 20000))
        block_free "$BASE_PORT" && return
    done
    die "no free block of $REPLICAS ports found after $try tries"
}
