#!/usr/bin/env bash
# `berth copy` throughput: a 1 GiB single-layer image (random bytes) copied between two local
# berth servers, against `skopeo copy --preserve-digests` of the same image in the same run,
# each to a fresh destination server. Everything on loopback.
#
# A benchmark, not a test: prints MiB/s for each and the ratio; exits non-zero only when
# something is broken. See bench/README.md ("The copy benchmark").
#
# Environment (all optional):
#   BERTH_BIN            berth binary; unset: `cargo build --release -p berth` in CARGO_TARGET_DIR
#   BENCH_COPY_MIB       layer size in MiB                      (default 1024)
#   BENCH_COPY_RUNS      copies per tool (fresh destination each; median reported) (default 1)
#   BENCH_TMPDIR         where the temp work dir goes           (default /tmp)
#   BENCH_COPY_RESULTS   results file        (default bench/copy-results-latest.txt)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MIB=${BENCH_COPY_MIB:-1024}
RUNS=${BENCH_COPY_RUNS:-1}
TMP_BASE=${BENCH_TMPDIR:-/tmp}
RESULTS=${BENCH_COPY_RESULTS:-$HERE/copy-results-latest.txt}
REPO=bench/big
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json

log() { printf '[copy-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
for tool in curl skopeo sha256sum python3; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ $MIB =~ ^[1-9][0-9]*$ && $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_COPY_MIB and BENCH_COPY_RUNS must be positive integers"

WORK=$(mktemp -d "$TMP_BASE/berth-copy-bench.XXXXXX")
OUR_PIDS=()
cleanup() {
    local p
    for p in "${OUR_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${OUR_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z ${BERTH_BIN:-} ]]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/berth-target}
    log "building berth (release) in $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -p berth >&2) || die "berth did not build"
    BERTH_BIN=$CARGO_TARGET_DIR/release/berth
fi

# start_berth NAME: a berth server with an empty data dir; prints its host:port.
start_berth() {
    local dir=$WORK/$1 i addr
    mkdir -p "$dir/data"
    cat >"$dir/config.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "$dir/data"
EOF
    env -u RUST_LOG "$BERTH_BIN" serve --config "$dir/config.toml" >"$dir/stdout" 2>"$dir/stderr" &
    OUR_PIDS+=($!)
    for ((i = 0; i < 300; i++)); do
        addr=$(sed -n 's#^berth listening on http://\([^ ]*\).*#\1#p' "$dir/stdout" | head -1)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    [[ -n $addr ]] || die "berth $1 did not start: $(tail -5 "$dir/stderr")"
    echo "$addr"
}

# push_blob ADDR FILE DIGEST: POST, then PUT the whole file.
push_blob() {
    local loc
    loc=$(curl -fsS -o /dev/null -D - -X POST "http://$1/v2/$REPO/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    [[ $loc == http* ]] || loc=http://$1$loc
    [[ $loc == *\?* ]] && loc="$loc&digest=$3" || loc="$loc?digest=$3"
    curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$2" "$loc"
}

SRC=$(start_berth src)
log "source berth on $SRC; writing a $MIB MiB random layer"
head -c "$((MIB * 1048576))" /dev/urandom >"$WORK/layer"
LAYER_SIZE=$(stat -c %s "$WORK/layer")
LAYER_DIGEST=sha256:$(sha256sum "$WORK/layer" | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$LAYER_DIGEST" >"$WORK/config"
CONFIG_DIGEST=sha256:$(sha256sum "$WORK/config" | cut -d' ' -f1)
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}' \
    "$MT_MANIFEST" "$CONFIG_DIGEST" "$(stat -c %s "$WORK/config")" "$LAYER_DIGEST" "$LAYER_SIZE" >"$WORK/manifest"
push_blob "$SRC" "$WORK/config" "$CONFIG_DIGEST"
push_blob "$SRC" "$WORK/layer" "$LAYER_DIGEST"
curl -fsS -o /dev/null -X PUT -H "Content-Type: $MT_MANIFEST" --data-binary @"$WORK/manifest" "http://$SRC/v2/$REPO/manifests/v1"
MANIFEST_DIGEST=sha256:$(sha256sum "$WORK/manifest" | cut -d' ' -f1)
rm -f "$WORK/layer"

now() { date +%s.%N; }
BERTH_T=()
SKOPEO_T=()
for ((run = 1; run <= RUNS; run++)); do
    D1=$(start_berth "dst-berth-$run")
    t0=$(now)
    XDG_CACHE_HOME=$WORK/cache "$BERTH_BIN" copy --quiet "$SRC/$REPO:v1" "$D1/$REPO:v1" >&2 || die "berth copy failed"
    t1=$(now)
    BERTH_T+=("$(python3 -c "print($t1 - $t0)")")
    got=$(curl -fsS -o /dev/null -D - -H "Accept: $MT_MANIFEST" "http://$D1/v2/$REPO/manifests/v1" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
    [[ $got == "$MANIFEST_DIGEST" ]] || die "berth copy: the destination has $got, not $MANIFEST_DIGEST"

    D2=$(start_berth "dst-skopeo-$run")
    t0=$(now)
    skopeo --insecure-policy copy --quiet --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
        "docker://$SRC/$REPO:v1" "docker://$D2/$REPO:v1" >&2 || die "skopeo copy failed"
    t1=$(now)
    SKOPEO_T+=("$(python3 -c "print($t1 - $t0)")")
    got=$(curl -fsS -o /dev/null -D - -H "Accept: $MT_MANIFEST" "http://$D2/v2/$REPO/manifests/v1" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
    [[ $got == "$MANIFEST_DIGEST" ]] || die "skopeo copy: the destination has $got, not $MANIFEST_DIGEST"
    # Free the space before the next run.
    for p in "${OUR_PIDS[@]: -2}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK/dst-berth-$run" "$WORK/dst-skopeo-$run"
done

REPORT=$(python3 - "$LAYER_SIZE" "$(IFS=,; echo "${BERTH_T[*]}")" "$(IFS=,; echo "${SKOPEO_T[*]}")" "$("$BERTH_BIN" --version)" "$(skopeo --version)" <<'EOF'
import statistics, sys
size = int(sys.argv[1])
berth = [float(x) for x in sys.argv[2].split(",")]
skopeo = [float(x) for x in sys.argv[3].split(",")]
mib = size / 1048576
b, s = statistics.median(berth), statistics.median(skopeo)
print(f"copy of a {mib:.0f} MiB single-layer image between two local berth servers (loopback, fresh destination each run)")
print(f"{sys.argv[4]}; {sys.argv[5]}; runs per tool: {len(berth)}")
print(f"{'tool':<40} {'seconds':>8} {'MiB/s':>8}")
print(f"{'berth copy':<40} {b:8.2f} {mib / b:8.1f}")
print(f"{'skopeo copy --preserve-digests':<40} {s:8.2f} {mib / s:8.1f}")
print(f"ratio berth/skopeo (throughput): {s / b:.2f}")
print(f"raw seconds: berth {berth}, skopeo {skopeo}")
EOF
)
{
    echo "# bench/copy.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$REPORT"
} | tee "$RESULTS"
