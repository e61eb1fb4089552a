#!/bin/bash
# Prints the instructions that one data server executes per acknowledged write, counted by
# callgrind: the difference between a run of 3,500 writes and a run of 500, divided by 3,000.
# The subtraction removes start-up, the registration's password hash and the shutdown.
#
# Usage: crates/bench/callgrind/instructions_per_write.sh [FORUM_BENCH_BINARY]
# Needs valgrind, and Python with pyzmq and msgpack (the .venv that .ci/run creates).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
binary="${1:-$root/target/release/forum-bench}"
python="${FORUM_PYTHON:-$root/.venv/bin/python}"

count_instructions() {
    local writes=$1 scratch port
    scratch="$(mktemp -d)"
    port=$((24000 + RANDOM % 500))
    valgrind --tool=callgrind --callgrind-out-file="$scratch/callgrind.out" "$binary" serve-data --id=1 \
        --request="tcp://127.0.0.1:$port" --publish="tcp://127.0.0.1:$((port + 500))" --data-dir="$scratch/data" \
        > "$scratch/stdout" 2> "$scratch/stderr" &
    local server=$!
    for _ in $(seq 1 120); do
        grep -q READY "$scratch/stdout" && break
        sleep 0.5
    done
    "$python" "$here/write_driver.py" "tcp://127.0.0.1:$port" "$writes"
    kill -TERM "$server"
    wait "$server" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$scratch/callgrind.out"
    rm -rf "$scratch"
}

few=$(count_instructions 500)
many=$(count_instructions 3500)
echo "$(( (many - few) / 3000 )) instructions per acknowledged write"
