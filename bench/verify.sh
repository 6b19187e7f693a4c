#!/usr/bin/env bash
# What integrity costs: one 1 GiB blob pulled from berth with storage.verify_on_read on
# and off, the scrub re-hashing it, and sha256sum on the same file, in one run.
# A benchmark, not a test: it prints figures and ratios. Loopback only.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/berth-target}
BIN=${BERTH_BIN:-}
if [[ -z $BIN ]]; then
    (cd "$ROOT" && cargo build --release -p berth >&2)
    BIN=$CARGO_TARGET_DIR/release/berth
fi
MIB=${BENCH_BLOB_MIB:-1024}
RUNS=${BENCH_RUNS:-3}
WORK=$(mktemp -d /tmp/berth-verify.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # VERIFY -> sets URL, PID
    local port; port=$(free_port)
    cat >"$WORK/c-$1.toml" <<CFG
[server]
listen = "127.0.0.1:$port"
log = "warn"
[storage]
data_dir = "$WORK/data"
verify_on_read = $1
[gc]
schedule = "off"
[scrub]
schedule = "off"
verify_after_push = false
CFG
    "$BIN" serve --config "$WORK/c-$1.toml" >"$WORK/out-$1" 2>"$WORK/err-$1" &
    PID=$!; PIDS+=("$PID")
    for _ in $(seq 100); do grep -q "listening" "$WORK/out-$1" 2>/dev/null && break; sleep 0.1; done
    URL="http://127.0.0.1:$port"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

head -c $((MIB << 20)) /dev/urandom >"$WORK/blob"
D=sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)
start false
curl -sf -X POST -T "$WORK/blob" "$URL/v2/bench/blobs/uploads?digest=$D" -o /dev/null
pull() { for _ in $(seq "$RUNS"); do curl -s -o /dev/null -w '%{speed_download}\n' "$URL/v2/bench/blobs/$D"; done | median; }
OFF=$(pull)
kill "$PID"; wait "$PID" 2>/dev/null || true
start true
ON=$(pull)
FILE=$WORK/data/blobs/sha256/${D:7:2}/${D:7}
SUM_S=$( { /usr/bin/time -f '%e' sha256sum "$FILE" >/dev/null; } 2>&1 )
T0=$(date +%s.%N)
"$BIN" scrub --server "$URL" >/dev/null
T1=$(date +%s.%N)
kill "$PID"
awk -v off="$OFF" -v on="$ON" -v s="$SUM_S" -v mib="$MIB" -v t0="$T0" -v t1="$T1" 'BEGIN {
    off /= 1048576; on /= 1048576; sum = mib / s; scrub = mib / (t1 - t0)
    printf "blob %d MiB, pulls median of runs, one curl client, loopback\n", mib
    printf "%-44s %10.1f MiB/s\n", "GET, verify_on_read = false", off
    printf "%-44s %10.1f MiB/s  (%.2fx of off)\n", "GET, verify_on_read = true", on, on / off
    printf "%-44s %10.1f MiB/s  (GET with verify = %.2fx of it)\n", "sha256sum on the same file", sum, on / sum
    printf "%-44s %10.1f MiB/s  (%.2fx of sha256sum)\n", "berth scrub (re-hash, whole run)", scrub, scrub / sum
}'
