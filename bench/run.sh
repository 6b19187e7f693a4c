#!/usr/bin/env bash
# berth benchmark: berth vs CNCF distribution 2.8 (Debian `docker-registry`) vs nginx serving
# berth's blob files, all on loopback on this machine, fresh temp data directories.
#
# This is a benchmark, not a test: it prints numbers and whether the targets are met. It exits
# non-zero only when something is broken (a server does not start, setup fails), or, with
# BENCH_STRICT=1, when a target is not met. See bench/README.md.
#
# Environment (all optional):
#   BERTH_BIN            berth binary to use; unset: `cargo build --release -p berth` (in
#                        CARGO_TARGET_DIR, default /var/cache/berth-target). If the build fails
#                        the berth column is skipped ("berth: not built").
#   BENCH_SKIP_BERTH=1   do not build/run berth at all
#   BENCH_BLOB_MIB       size of the big push/pull blobs            (default 1024)
#   BENCH_CHUNK_MIB      PATCH chunk size for the chunked push      (default 16)
#   BENCH_PAR_N          number of parallel pulls                   (default 16)
#   BENCH_PAR_MIB        size of each parallel-pull blob            (default 256)
#   BENCH_PULL_RUNS      runs per pull measurement, median reported (default 3)
#   BENCH_WRK_DURATION   wrk duration per measurement               (default 10s)
#   BENCH_WRK_WARMUP     wrk warm-up before each measurement, 0=off (default 2s)
#   BENCH_WRK_CONNS      wrk connections                            (default 64)
#   BENCH_WRK_THREADS    wrk threads                                (default 2)
#   BENCH_TMPDIR         where the temp work dir goes               (default /tmp)
#   BENCH_RESULTS        results file             (default bench/results-latest.txt)
#   BENCH_STRICT=1       exit 1 if a target is not met
#   BERTH_RUST_LOG       RUST_LOG for berth                         (default warn)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
BENCH_NAME=bench

BLOB_MIB=${BENCH_BLOB_MIB:-1024}
CHUNK_MIB=${BENCH_CHUNK_MIB:-16}
PAR_N=${BENCH_PAR_N:-16}
PAR_MIB=${BENCH_PAR_MIB:-256}
PULL_RUNS=${BENCH_PULL_RUNS:-3}
WRK_DURATION=${BENCH_WRK_DURATION:-10s}
WRK_WARMUP=${BENCH_WRK_WARMUP:-2s}
WRK_CONNS=${BENCH_WRK_CONNS:-64}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
TMP_BASE=${BENCH_TMPDIR:-/tmp}
RESULTS=${BENCH_RESULTS:-$HERE/results-latest.txt}
STRICT=${BENCH_STRICT:-0}
REPO=bench/app          # repository name used on both registries
TAG=latest
CURL_MAX=600            # hard cap (s) on any single curl
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json

for tool in curl wrk nginx docker-registry python3 awk stat split sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install -y wrk nginx-light docker-registry curl)"
done

# ---------------------------------------------------------------------------------------------
# work dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
bench_workdir berth-bench

# ---------------------------------------------------------------------------------------------
# HTTP helpers (registry API). They never exit; they return 1 and print an error.
# ---------------------------------------------------------------------------------------------

push_chunked() { # BASE DIGEST CHUNKFILE...: POST, PATCH each chunk with Content-Range, PUT ?digest=
    local base=$1 dg=$2 off=0 sz code loc c
    shift 2
    upload_start "$base" || return 1
    for c in "$@"; do
        sz=$(stat -c %s "$c")
        code=$(req -X PATCH -T "$c" -H 'Content-Type: application/octet-stream' \
            -H "Content-Range: $off-$((off + sz - 1))" "$UPLOAD_URL")
        [[ $code == 202 ]] || { err "PATCH bytes $off-$((off + sz - 1)) -> HTTP $code $(head -c 300 "$WORK/b")"; return 1; }
        printf '%s %s\n' "$code" "$(hdr range)" >"$WORK/last-patch"
        loc=$(hdr location)
        [[ -n $loc ]] || { err "PATCH: no Location header"; return 1; }
        UPLOAD_URL=$(abs_url "$base" "$loc")
        off=$((off + sz))
    done
    code=$(req -X PUT -H 'Content-Length: 0' "$(add_query "$UPLOAD_URL" "digest=$dg")")
    [[ $code == 201 ]] || { err "final chunked PUT -> HTTP $code $(head -c 300 "$WORK/b")"; return 1; }
}
blob_check() { # URL SIZE: HEAD -> 200 with the right Content-Length
    local code len
    code=$(req -I "$1")
    len=$(hdr content-length)
    [[ $code == 200 && $len == "$2" ]] || { err "HEAD $1 -> HTTP $code, Content-Length '$len' (want $2)"; return 1; }
}
pull_one() { # URL SIZE -> MiB/s (curl's own transfer time)
    local out code size t
    out=$(curl -sS --max-time "$CURL_MAX" -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$1") || { err "GET $1 failed"; return 1; }
    read -r code size t <<<"$out"
    [[ $code == 200 && $size == "$2" ]] || { err "GET $1 -> HTTP $code, $size bytes (want $2)"; return 1; }
    mib_per_s "$size" "$t"
}
pull_par() { # SIZE URL... -> aggregate MiB/s over the wall time of all parallel curls
    local want=$1 i=0 p u t0 t1 code size total=0 bad=0
    shift
    local -a pids=()
    t0=$(now)
    for u in "$@"; do
        curl -sS --max-time "$CURL_MAX" -o /dev/null -w '%{http_code} %{size_download}' "$u" >"$WORK/par.$i" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for p in "${pids[@]}"; do wait "$p" || bad=1; done
    t1=$(now)
    for ((i = 0; i < $#; i++)); do
        read -r code size <"$WORK/par.$i" || true
        if [[ $code == 200 && $size == "$want" ]]; then total=$((total + size)); else bad=1; err "parallel GET #$i: $(cat "$WORK/par.$i")"; fi
    done
    ((bad == 0)) || return 1
    mib_per_s "$total" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------
write_report_lua
{ echo 'wrk.method = "HEAD"'; cat "$WORK/report.lua"; } >"$WORK/head.lua"
run_wrk() { # LUA URL [wrk args...] -> sets WRK_LAST to the BENCH line; returns 1 on errors
    local lua=$1 url=$2 secs
    shift 2
    if [[ $WRK_WARMUP != 0 ]]; then
        secs=${WRK_WARMUP%s}
        timeout $((secs + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_WARMUP" -s "$lua" "$@" "$url" >/dev/null 2>&1 || true
    fi
    secs=${WRK_DURATION%s}
    timeout $((secs + 60)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --latency -s "$lua" "$@" "$url" >"$WORK/wrk.out" 2>&1 || true
    WRK_LAST=$(grep '^BENCH ' "$WORK/wrk.out" | tail -1)
    [[ -n $WRK_LAST ]] || { err "wrk produced no result:"; cat "$WORK/wrk.out" >&2; return 1; }
    local nerr
    nerr=$(wrk_field err_status) && nerr=$((nerr + $(wrk_field err_connect) + $(wrk_field err_read) + $(wrk_field err_write) + $(wrk_field err_timeout)))
    if ((nerr > 0)); then err "wrk $url: $WRK_LAST"; grep -E 'Non-2xx|Socket errors' "$WORK/wrk.out" >&2 || true; return 1; fi
}

# ---------------------------------------------------------------------------------------------
# 0. berth binary
# ---------------------------------------------------------------------------------------------
find_berth "distribution and nginx"
BERTH=$BERTH_SRC
SERVERS=(distribution nginx)
REGISTRIES=(distribution)
if [[ -n $BERTH ]]; then SERVERS=(berth distribution nginx); REGISTRIES=(berth distribution); fi
log "berth binary: ${BERTH:-none}"

# ---------------------------------------------------------------------------------------------
# 1. test data
# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/data" "$WORK/chunks"
# Files are made by up to 2 background jobs (one per core) with lib.sh's rand_file and sha_file.
gen_bg() { # FILE BYTES: in the background, write random data to FILE and its digest to FILE.sha256
    while (($(jobs -rp | wc -l) >= 2)); do wait -n || true; done
    (rand_file "$1" "$2" && sha_file "$1" >"$1.sha256.tmp" && mv "$1.sha256.tmp" "$1.sha256") &
}
gen_hex() { # FILE BYTES -> digest hex made by gen_bg (after `wait`)
    local h
    h=$(cat "$1.sha256" 2>/dev/null || true)
    [[ ${#h} == 64 && $(stat -c %s "$1" 2>/dev/null) == "$2" ]] || die "generating $1 failed"
    printf '%s' "$h"
}
t_gen=$(now)
log "generating test data in $WORK (${BLOB_MIB} MiB x2, ${PAR_N} x ${PAR_MIB} MiB) ..."
BIG=$WORK/data/big.bin
BIG_SIZE=$((BLOB_MIB * 1048576))
CHUNKED=$WORK/data/chunked.bin # a second, different blob for the chunked push
CHUNKED_SIZE=$BIG_SIZE
PAR_SIZE=$((PAR_MIB * 1048576))
declare -a PAR_FILES=() PAR_HEX=()
for ((i = 0; i < PAR_N; i++)); do PAR_FILES+=("$WORK/data/par-$i.bin"); done
gen_bg "$BIG" "$BIG_SIZE"
gen_bg "$CHUNKED" "$CHUNKED_SIZE"
for f in "${PAR_FILES[@]}"; do gen_bg "$f" "$PAR_SIZE"; done
wait
BIG_HEX=$(gen_hex "$BIG" "$BIG_SIZE")
CHUNKED_HEX=$(gen_hex "$CHUNKED" "$CHUNKED_SIZE")
for f in "${PAR_FILES[@]}"; do PAR_HEX+=("$(gen_hex "$f" "$PAR_SIZE")"); done
split -b "$((CHUNK_MIB * 1048576))" -d -a 5 "$CHUNKED" "$WORK/chunks/c-"
rm -f "$CHUNKED"
mapfile -t CHUNKS < <(ls "$WORK"/chunks/c-* | sort)
# a small OCI image: one 4 KiB layer + config + manifest
LAYER=$WORK/data/layer.bin
head -c 4096 /dev/urandom >"$LAYER"
LAYER_HEX=$(sha_file "$LAYER")
LAYER_SIZE=$(stat -c %s "$LAYER")
# wrk 4.1 cannot do HEAD against a non-empty body (its parser waits for Content-Length bytes
# that never come), so the HEAD benchmark uses the zero-length blob.
EMPTY=$WORK/data/empty.bin
: >"$EMPTY"
EMPTY_HEX=$(sha_file "$EMPTY")
CONFIG=$WORK/data/config.json
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$LAYER_HEX" >"$CONFIG"
CONFIG_HEX=$(sha_file "$CONFIG")
CONFIG_SIZE=$(stat -c %s "$CONFIG")
MANIFEST=$WORK/data/manifest.json
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$MT_MANIFEST" "$CONFIG_HEX" "$CONFIG_SIZE" "$LAYER_HEX" "$LAYER_SIZE" >"$MANIFEST"
MANIFEST_HEX=$(sha_file "$MANIFEST")
log "test data ready in $(awk -v a="$t_gen" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')s; syncing ..."
timeout 300 sync || true

# ---------------------------------------------------------------------------------------------
# 2. servers
# ---------------------------------------------------------------------------------------------
read -r PORT_BERTH PORT_DIST PORT_NGINX <<<"$(free_ports 3)"
declare -A BASE=() PID=()

# --- distribution ---
mkdir -p "$WORK/dist/data"
cat >"$WORK/dist/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/dist/data
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT_DIST
  secret: berth-bench-secret
EOF
declare -a ENV_UNSET=()
while IFS= read -r v; do ENV_UNSET+=(-u "$v"); done < <(env | awk -F= '/^REGISTRY_/ { print $1 }')
env "${ENV_UNSET[@]}" docker-registry serve "$WORK/dist/config.yml" >"$WORK/dist/log" 2>&1 &
PID[distribution]=$!
OUR_PIDS+=("${PID[distribution]}")
BASE[distribution]=http://127.0.0.1:$PORT_DIST

# --- berth ---
if [[ -n $BERTH ]]; then
    mkdir -p "$WORK/berth/data"
    cat >"$WORK/berth/config.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT_BERTH"
[storage]
data_dir = "$WORK/berth/data"
EOF
    RUST_LOG=${BERTH_RUST_LOG:-warn} "$BERTH" serve --config "$WORK/berth/config.toml" >"$WORK/berth/stdout" 2>"$WORK/berth/stderr" &
    PID[berth]=$!
    OUR_PIDS+=("${PID[berth]}")
    BASE[berth]=http://127.0.0.1:$PORT_BERTH
fi

wait_ready() { # NAME URL: GET URL -> 200 within 30 s while the process lives
    local i code
    for ((i = 0; i < 300; i++)); do
        kill -0 "${PID[$1]}" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$2" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
wait_ready distribution "${BASE[distribution]}/v2/" || { cat "$WORK/dist/log" >&2; die "distribution did not start"; }
log "distribution $(docker-registry --version 2>/dev/null | awk '{ print $NF }') ready at ${BASE[distribution]} (pid ${PID[distribution]})"
if [[ -n $BERTH ]]; then
    for ((i = 0; i < 300; i++)); do
        grep -q '^berth listening on http://' "$WORK/berth/stdout" 2>/dev/null && break
        kill -0 "${PID[berth]}" 2>/dev/null || break
        sleep 0.1
    done
    addr=$(sed -n 's#^berth listening on http://\([^ ]*\).*#\1#p' "$WORK/berth/stdout" | head -1)
    [[ -n $addr ]] && BASE[berth]=http://$addr
    if wait_ready berth "${BASE[berth]}/v2/"; then
        log "berth ready at ${BASE[berth]} (pid ${PID[berth]})"
    else
        cat "$WORK/berth/stdout" "$WORK/berth/stderr" >&2
        die "berth did not start (no 'berth listening on' line / GET /v2/ != 200)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 3. timed pushes (monolithic, then chunked), each after a sync so dirty-page writeback of
#    earlier phases does not land on the next server
# ---------------------------------------------------------------------------------------------
timed() { # prints seconds taken by "$@", returns its status
    local t0 t1 rc=0
    t0=$(now)
    "$@" || rc=$?
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
    return $rc
}
for s in "${REGISTRIES[@]}"; do
    timeout 300 sync || true
    log "$s: monolithic push of ${BLOB_MIB} MiB ..."
    if t=$(timed push_mono "${BASE[$s]}" "$BIG" "sha256:$BIG_HEX") && blob_check "${BASE[$s]}/v2/$REPO/blobs/sha256:$BIG_HEX" "$BIG_SIZE"; then
        set_r push_mono "$s" "$(mib_per_s "$BIG_SIZE" "$t")"
    else
        set_r push_mono "$s" ERR
    fi
    timeout 300 sync || true
    log "$s: chunked push of ${BLOB_MIB} MiB in ${#CHUNKS[@]} x ${CHUNK_MIB} MiB PATCHes ..."
    rm -f "$WORK/last-patch"
    if t=$(timed push_chunked "${BASE[$s]}" "sha256:$CHUNKED_HEX" "${CHUNKS[@]}") && blob_check "${BASE[$s]}/v2/$REPO/blobs/sha256:$CHUNKED_HEX" "$CHUNKED_SIZE"; then
        set_r push_chunked "$s" "$(mib_per_s "$CHUNKED_SIZE" "$t")"
    else
        set_r push_chunked "$s" ERR
    fi
    RAW+=("push_chunked.$s.last_patch_response=$(cat "$WORK/last-patch" 2>/dev/null)")
done
rm -rf "$WORK/chunks"

# ---------------------------------------------------------------------------------------------
# 4. untimed setup pushes: parallel-pull blobs and the small image
# ---------------------------------------------------------------------------------------------
declare -A OK=() # OK[server.par|empty|manifest]=1 when that setup step worked
for s in "${REGISTRIES[@]}"; do
    log "$s: pushing ${PAR_N} x ${PAR_MIB} MiB blobs and a small OCI image (untimed) ..."
    OK[$s.par]=1
    for ((i = 0; i < PAR_N; i++)); do
        push_mono "${BASE[$s]}" "${PAR_FILES[$i]}" "sha256:${PAR_HEX[$i]}" || { err "$s: pushing parallel-pull blob $i failed"; OK[$s.par]=0; break; }
    done
    if push_mono "${BASE[$s]}" "$EMPTY" "sha256:$EMPTY_HEX" && blob_check "${BASE[$s]}/v2/$REPO/blobs/sha256:$EMPTY_HEX" 0; then
        OK[$s.empty]=1
    else
        err "$s: empty blob push/HEAD failed"
    fi
    OK[$s.manifest]=0
    if push_mono "${BASE[$s]}" "$LAYER" "sha256:$LAYER_HEX" && push_mono "${BASE[$s]}" "$CONFIG" "sha256:$CONFIG_HEX"; then
        code=$(req -X PUT -H "Content-Type: $MT_MANIFEST" --data-binary "@$MANIFEST" "${BASE[$s]}/v2/$REPO/manifests/$TAG")
        if [[ $code == 201 ]]; then
            code=$(req -H "Accept: $MT_MANIFEST" "${BASE[$s]}/v2/$REPO/manifests/$TAG")
            if [[ $code == 200 && $(sha_file "$WORK/b") == "$MANIFEST_HEX" ]]; then
                OK[$s.manifest]=1
            else
                err "$s: GET manifest by tag -> HTTP $code, body digest $(sha_file "$WORK/b") (want $MANIFEST_HEX)"
            fi
        else
            err "$s: manifest PUT -> HTTP $code $(head -c 300 "$WORK/b")"
        fi
        # small blob round trip: content must come back intact
        code=$(req "${BASE[$s]}/v2/$REPO/blobs/sha256:$LAYER_HEX")
        [[ $code == 200 && $(sha_file "$WORK/b") == "$LAYER_HEX" ]] || err "$s: GET layer blob -> HTTP $code or wrong content"
    else
        err "$s: pushing the image's layer/config blobs failed"
    fi
done
rm -rf "$WORK/data" # frees page cache used by the client-side copies

# --- nginx: serves berth's blob files (or distribution's when berth is absent/unusable) ---
blob_path_berth() { printf '/blobs/sha256/%s/%s' "${1:0:2}" "$1"; }
blob_path_dist() { printf '/docker/registry/v2/blobs/sha256/%s/%s/data' "${1:0:2}" "$1"; }
NGINX_ROOT= NGINX_LAYOUT=
if [[ -n $BERTH ]]; then
    if [[ -f $WORK/berth/data$(blob_path_berth "$BIG_HEX") ]]; then
        NGINX_ROOT=$WORK/berth/data NGINX_LAYOUT=berth
    else
        err "berth's blob files are not at <data_dir>/blobs/sha256/<2>/<hex>; nginx falls back to distribution's files"
    fi
fi
if [[ -z $NGINX_ROOT ]]; then NGINX_ROOT=$WORK/dist/data NGINX_LAYOUT=dist; fi
if [[ $NGINX_LAYOUT == berth ]]; then src=berth; else src=distribution; fi
OK[nginx.par]=${OK[$src.par]} OK[nginx.empty]=${OK[$src.empty]}
nginx_path() { if [[ $NGINX_LAYOUT == berth ]]; then blob_path_berth "$1"; else blob_path_dist "$1"; fi; }
N=$WORK/nginx
mkdir -p "$N/tmp" "$N/logs"
NGINX_USER=
[[ $(id -u) == 0 ]] && NGINX_USER="user root;" # workers must read berth's (possibly 0600) files
cat >"$N/nginx.conf" <<EOF
$NGINX_USER
worker_processes 2;
pid $N/nginx.pid;
error_log $N/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    types { }
    client_body_temp_path $N/tmp/body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    server {
        listen 127.0.0.1:$PORT_NGINX;
        root $NGINX_ROOT;
        location / { }
    }
}
EOF
nginx -p "$N" -c "$N/nginx.conf" -e "$N/logs/error.log" -g 'daemon off;' >"$N/logs/stdout" 2>&1 &
PID[nginx]=$!
OUR_PIDS+=("${PID[nginx]}")
BASE[nginx]=http://127.0.0.1:$PORT_NGINX
wait_ready nginx "${BASE[nginx]}$(nginx_path "$LAYER_HEX")" || { cat "$N/logs/"* >&2; die "nginx did not start / cannot read blob files under $NGINX_ROOT"; }
log "nginx $(nginx -v 2>&1 | sed 's#.*/##') ready at ${BASE[nginx]} (pid ${PID[nginx]}), serving $NGINX_LAYOUT blob files"

blob_url() { # SERVER HEX
    if [[ $1 == nginx ]]; then printf '%s%s' "${BASE[nginx]}" "$(nginx_path "$2")"; else printf '%s/v2/%s/blobs/sha256:%s' "${BASE[$1]}" "$REPO" "$2"; fi
}
timeout 300 sync || true

# ---------------------------------------------------------------------------------------------
# 5. pulls
# ---------------------------------------------------------------------------------------------
for s in "${SERVERS[@]}"; do
    # warm-up read (page cache) and sanity check
    pull_one "$(blob_url "$s" "$BIG_HEX")" "$BIG_SIZE" >/dev/null || true
    declare -a v=()
    for ((r = 0; r < PULL_RUNS; r++)); do v+=("$(pull_one "$(blob_url "$s" "$BIG_HEX")" "$BIG_SIZE" || echo ERR)"); done
    set_r pull_one "$s" "$(median "${v[@]}")"
    RAW+=("pull_one.$s.runs=${v[*]}")
    log "$s: single-stream pull ${BLOB_MIB} MiB: ${v[*]} MiB/s"
done
for s in "${SERVERS[@]}"; do
    if [[ ${OK[$s.par]} != 1 ]]; then set_r pull_par "$s" ERR; continue; fi
    declare -a urls=() v=()
    for ((i = 0; i < PAR_N; i++)); do urls+=("$(blob_url "$s" "${PAR_HEX[$i]}")"); done
    pull_par "$PAR_SIZE" "${urls[@]}" >/dev/null || true # warm-up
    for ((r = 0; r < PULL_RUNS; r++)); do v+=("$(pull_par "$PAR_SIZE" "${urls[@]}" || echo ERR)"); done
    set_r pull_par "$s" "$(median "${v[@]}")"
    RAW+=("pull_par.$s.runs=${v[*]}")
    log "$s: ${PAR_N} parallel pulls of ${PAR_MIB} MiB: ${v[*]} MiB/s aggregate"
done

# ---------------------------------------------------------------------------------------------
# 6. request rates (wrk)
# ---------------------------------------------------------------------------------------------
for s in "${REGISTRIES[@]}"; do
    if [[ ${OK[$s.manifest]} != 1 ]]; then set_r manifest_rps "$s" ERR; set_r manifest_p99 "$s" ERR; continue; fi
    log "$s: wrk manifest GET by tag (${WRK_CONNS} conns, ${WRK_DURATION}) ..."
    if run_wrk "$WORK/report.lua" "${BASE[$s]}/v2/$REPO/manifests/$TAG" -H "Accept: $MT_MANIFEST"; then
        set_r manifest_rps "$s" "$(wrk_field rps)"
        set_r manifest_p99 "$s" "$(us_to_ms "$(wrk_field p99_us)")"
    else
        set_r manifest_rps "$s" ERR; set_r manifest_p99 "$s" ERR
    fi
    RAW+=("manifest_wrk.$s=${WRK_LAST#BENCH }")
done
for s in "${SERVERS[@]}"; do
    log "$s: wrk blob HEAD (${WRK_CONNS} conns, ${WRK_DURATION}) ..."
    if [[ ${OK[$s.empty]} != 1 ]]; then set_r head_rps "$s" ERR; set_r head_p99 "$s" ERR; continue; fi
    blob_check "$(blob_url "$s" "$EMPTY_HEX")" 0 || true
    if run_wrk "$WORK/head.lua" "$(blob_url "$s" "$EMPTY_HEX")"; then
        set_r head_rps "$s" "$(wrk_field rps)"
        set_r head_p99 "$s" "$(us_to_ms "$(wrk_field p99_us)")"
    else
        set_r head_rps "$s" ERR; set_r head_p99 "$s" ERR
    fi
    RAW+=("head_wrk.$s=${WRK_LAST#BENCH }")
done

# ---------------------------------------------------------------------------------------------
# 7. peak RSS (VmHWM), read while the servers are still alive
# ---------------------------------------------------------------------------------------------
for s in "${SERVERS[@]}"; do
    kib=$(vmhwm_kib "${PID[$s]}")
    if [[ $s == nginx ]]; then # master + workers
        for c in $(awk -v pp="${PID[nginx]}" '$4 == pp { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do kib=$((kib + $(vmhwm_kib "$c"))); done
    fi
    if ! kill -0 "${PID[$s]}" 2>/dev/null; then err "$s died during the benchmark"; set_r rss "$s" ERR; continue; fi
    set_r rss "$s" "$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
done

# ---------------------------------------------------------------------------------------------
# 8. report
# ---------------------------------------------------------------------------------------------
ratio() { # A B -> A/B or n/a
    awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b == 0) print "n/a"; else printf "%.2fx", a / b }'
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && a + 0 >= b + 0) }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && a + 0 < b + 0) }'; }
SHA_REF=$(openssl speed -seconds 1 -bytes 16384 -evp sha256 2>/dev/null | awk '$1 == "sha256" { v = $2; sub(/k$/, "", v); printf "%.0f", v * 1000 / 1048576 }' || true)

target() { # DESCRIPTION CONDITION-RESULT(0 met / 1 not met / 2 n/a)
    local st
    # report() runs in a pipeline subshell, so a missed target is flagged with a file
    case $2 in 0) st="MET" ;; 1) st="NOT MET"; : >"$WORK/unmet" ;; *) st="n/a" ;; esac
    printf '  %-62s %s\n' "$1" "$st"
}
report() {
    local b=berth d=distribution n=nginx
    echo
    echo "berth benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
    echo "host: $(nproc) cores, $(awk '/^model name/ { $1 = $2 = $3 = ""; print; exit }' /proc/cpuinfo | sed 's/^ *//'), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); openssl sha256 1 core: ${SHA_REF:-?} MiB/s"
    echo "servers: berth=${BERTH:-not built}; distribution $(docker-registry --version 2>/dev/null | awk '{ print $NF }'); $(nginx -v 2>&1 | sed 's#.*: ##') serving $NGINX_LAYOUT blob files"
    echo "sizes: push/pull blob ${BLOB_MIB} MiB, chunks ${CHUNK_MIB} MiB, parallel ${PAR_N} x ${PAR_MIB} MiB, pulls median of ${PULL_RUNS}; wrk -t${WRK_THREADS} -c${WRK_CONNS} -d${WRK_DURATION} (warm-up ${WRK_WARMUP})"
    echo
    printf '%-34s %12s %12s %12s %11s %11s\n' metric berth distribution nginx berth/dist berth/nginx
    printf '%-34s %12s %12s %12s %11s %11s\n' ---------------------------------- ------------ ------------ ------------ ----------- -----------
    row() { # LABEL KEY WITH_NGINX
        local vb vd vn rn=-
        vb=$(get_r "$2" $b) vd=$(get_r "$2" $d) vn=-
        if [[ $3 == 1 ]]; then vn=$(get_r "$2" $n); rn=$(ratio "$vb" "$vn"); fi
        printf '%-34s %12s %12s %12s %11s %11s\n' "$1" "$vb" "$vd" "$vn" "$(ratio "$vb" "$vd")" "$rn"
    }
    row "push ${BLOB_MIB}MiB monolithic (MiB/s)" push_mono 0
    row "push ${BLOB_MIB}MiB chunked ${CHUNK_MIB}MiB (MiB/s)" push_chunked 0
    row "pull ${BLOB_MIB}MiB 1 stream (MiB/s)" pull_one 1
    row "pull ${PAR_N}x${PAR_MIB}MiB parallel (MiB/s)" pull_par 1
    row "manifest GET by tag (req/s)" manifest_rps 0
    row "manifest GET p99 (ms)" manifest_p99 0
    row "blob HEAD, empty blob (req/s)" head_rps 1
    row "blob HEAD p99 (ms)" head_p99 1
    row "peak RSS VmHWM (MiB)" rss 1
    echo
    echo "targets:"
    local c
    if [[ -z $BERTH ]]; then c=2; else
        c=1; ge "$(get_r push_mono $b)" "$(awk -v x="$(get_r push_mono $d)" 'BEGIN { print 5 * x }')" && c=0; fi
    target "push monolithic >= 5x distribution" $c
    if [[ -z $BERTH ]]; then c=2; else
        c=1; ge "$(get_r push_chunked $b)" "$(awk -v x="$(get_r push_chunked $d)" 'BEGIN { print 5 * x }')" && c=0; fi
    target "push chunked >= 5x distribution" $c
    if [[ -z $BERTH ]]; then c=2; else
        c=1; ge "$(get_r pull_one $b)" "$(awk -v x="$(get_r pull_one $n)" 'BEGIN { print 0.9 * x }')" && c=0; fi
    target "blob pull, 1 stream >= 0.9x nginx" $c
    if [[ -z $BERTH ]]; then c=2; else
        c=1; ge "$(get_r pull_par $b)" "$(awk -v x="$(get_r pull_par $n)" 'BEGIN { print 0.9 * x }')" && c=0; fi
    target "blob pull, ${PAR_N} parallel >= 0.9x nginx" $c
    if [[ -z $BERTH ]]; then c=2; else
        c=1; ge "$(get_r manifest_rps $b)" "$(awk -v x="$(get_r manifest_rps $d)" 'BEGIN { print 10 * x }')" && lt "$(get_r manifest_p99 $b)" 10 && c=0; fi
    target "manifest GET >= 10x distribution req/s and p99 < 10 ms" $c
    if [[ -z $BERTH ]]; then c=2; else
        c=1; lt "$(get_r rss $b)" "$(awk -v x="$(get_r rss $d)" 'BEGIN { print x / 4 + 0.000001 }')" && c=0; fi
    target "peak RSS <= 1/4 distribution" $c
    [[ -n $BERTH ]] || echo "  (berth: not built - berth columns and targets skipped)"
}
write_results
if [[ $STRICT == 1 && -e $WORK/unmet ]]; then exit 1; fi
exit 0
