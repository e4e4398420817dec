#!/usr/bin/env bash
# Restart time and memory of one replica on a filled data directory.
#   cargo run --release -p paxoskv-server --example fill_replica -- /tmp/fill/replica-0 1000000 100
#   scripts/measure-restart.sh /tmp/fill [SERVER_BIN]
# Prints the time from exec to "is running" (snapshot and log loaded) and VmRSS/VmHWM then.
set -euo pipefail
dir=${1:?usage: measure-restart.sh DATA_DIR [SERVER_BIN]}
bin=${2:-target/release/paxoskv-server}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
start_ns=$(date +%s%N)
"$bin" --replica 0 --peers "127.0.0.1:$port" --data-dir "$dir" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 6000); do # at most 60 s
  grep -q "is running" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.01
done
end_ns=$(date +%s%N)
grep -q "is running" "$log" || { echo "not running after 60 s"; exit 1; }
echo "restart: $(( (end_ns - start_ns) / 1000000 )) ms"
grep -E "VmRSS|VmHWM" /proc/$pid/status
