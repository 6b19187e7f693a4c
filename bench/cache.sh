#!/usr/bin/env bash
# berth pull-through cache benchmark: berth vs CNCF distribution 2.8 in proxy mode (Debian
# `docker-registry`), both in front of the same plain distribution instance as the upstream,
# all on loopback (127.0.0.1) on this machine.
#
# This is a benchmark, not a test: it prints numbers and whether berth meets its cache targets.
# It exits non-zero only when something is broken (a server does not start, setup fails), or,
# with BENCH_STRICT=1, when a target is not met. See bench/README.md ("The cache benchmark").
#
# Environment (all optional):
#   BERTH_BIN              berth binary to use; unset: `cargo build --release -p berth` (in
#                          CARGO_TARGET_DIR, default /var/cache/berth-target). If the build
#                          fails the berth column is skipped ("berth: not built").
#   BENCH_SKIP_BERTH=1     do not build/run berth at all
#   BENCH_CACHE_MIB        size of the upstream blob                         (default 512)
#   BENCH_CACHE_CLIENTS    concurrent clients in the 16-client phases       (default 16)
#   BENCH_CACHE_RATIO      target for T16/T1                                 (default 1.3)
#   BENCH_CACHE_RSS_MIB    "RSS bounded" target for berth's peak VmHWM       (default 128)
#   BENCH_CACHE_OUTDIR     where clients write what they download (default /dev/shm when it
#                          has room for all clients' copies, else the work dir)
#   BENCH_TMPDIR           where the temp work dir goes                      (default /tmp)
#   BENCH_CACHE_RESULTS    results file         (default bench/cache-results-latest.txt)
#   BENCH_STRICT=1         exit 1 if a berth target is not met
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
BENCH_NAME=cache-bench

BLOB_MIB=${BENCH_CACHE_MIB:-512}
CLIENTS=${BENCH_CACHE_CLIENTS:-16}
RATIO_MAX=${BENCH_CACHE_RATIO:-1.3}
RSS_MAX=${BENCH_CACHE_RSS_MIB:-128}
TMP_BASE=${BENCH_TMPDIR:-/tmp}
RESULTS=${BENCH_CACHE_RESULTS:-$HERE/cache-results-latest.txt}
STRICT=${BENCH_STRICT:-0}
REPO=cache/big      # repository at the upstream
TAG=latest
UPNAME=up.test      # berth's [[upstream]] name: berth serves the upstream at /v2/up.test/...
CURL_MAX=300        # hard cap (s) on any single curl
SETTLE_MAX=120      # hard cap (s) on waiting for a cache to commit the blob
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json

for tool in curl docker-registry python3 awk stat cmp; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install -y docker-registry curl python3)"
done
[[ $BLOB_MIB =~ ^[1-9][0-9]*$ && $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CACHE_MIB and BENCH_CACHE_CLIENTS must be positive integers"
((CLIENTS <= 64)) || die "BENCH_CACHE_CLIENTS is capped at 64"

# ---------------------------------------------------------------------------------------------
# work dirs, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
bench_workdir berth-cache-bench
BLOB_SIZE=$((BLOB_MIB * 1048576))
if [[ -n ${BENCH_CACHE_OUTDIR:-} ]]; then
    OUT_BASE=$BENCH_CACHE_OUTDIR
elif [[ -d /dev/shm && -w /dev/shm ]] &&
    (($(df -Pk /dev/shm | awk 'NR == 2 { print $4 }') > (CLIENTS * BLOB_SIZE / 1024) + 1048576)); then
    OUT_BASE=/dev/shm
else
    OUT_BASE=$WORK
fi
OUT=$(mktemp -d "$OUT_BASE/berth-cache-bench-out.XXXXXX")

forget_pid() { # PID: drop from OUR_PIDS (after it was reaped, its number may be reused)
    local -a keep=()
    local p
    for p in "${OUR_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    OUR_PIDS=("${keep[@]}")
}
stop_pid() { # PID: TERM, up to 5 s grace, KILL, reap, forget
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}
cleanup() {
    stop_ours
    rm -rf "${OUT:-}" "$WORK"
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# 0. berth binary (copied into the work dir, so a rebuild during the run cannot swap it)
# ---------------------------------------------------------------------------------------------
BERTH=
find_berth distribution-proxy
if [[ -n $BERTH_SRC ]]; then
    cp "$BERTH_SRC" "$WORK/berth-bin" && BERTH=$WORK/berth-bin
fi
CACHES=(distribution-proxy)
[[ -n $BERTH ]] && CACHES=(berth distribution-proxy)
log "berth binary: ${BERTH_SRC:-none}"

# ---------------------------------------------------------------------------------------------
# 1. test data: one random blob, a tiny config, a manifest referencing both
# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/data"
BLOB=$WORK/data/blob.bin
log "generating a ${BLOB_MIB} MiB random blob ..."
rand_file "$BLOB" "$BLOB_SIZE"
[[ $(stat -c %s "$BLOB") == "$BLOB_SIZE" ]] || die "generating $BLOB failed"
BLOB_HEX=$(sha_file "$BLOB")
CONFIG=$WORK/data/config.json
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$BLOB_HEX" >"$CONFIG"
CONFIG_HEX=$(sha_file "$CONFIG")
MANIFEST=$WORK/data/manifest.json
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$MT_MANIFEST" "$CONFIG_HEX" "$(stat -c %s "$CONFIG")" "$BLOB_HEX" "$BLOB_SIZE" >"$MANIFEST"
MANIFEST_HEX=$(sha_file "$MANIFEST")

# ---------------------------------------------------------------------------------------------
# 2. servers
# ---------------------------------------------------------------------------------------------
declare -a ENV_UNSET=()
while IFS= read -r v; do ENV_UNSET+=(-u "$v"); done < <(env | awk -F= '/^REGISTRY_/ { print $1 }')
DIST_VERSION=$(docker-registry --version 2>/dev/null | awk '{ print $NF }')

wait_http() { # PID URL: GET URL -> 200 within 30 s while PID lives
    local i code
    for ((i = 0; i < 300; i++)); do
        kill -0 "$1" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$2" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
dist_config() { # DIR PORT [EXTRA YAML]: a distribution config in DIR/config.yml
    cat >"$1/config.yml" <<EOF
version: 0.1
log:
  level: ${DIST_LOG_LEVEL:-error}
  accesslog:
    disabled: ${DIST_ACCESSLOG_OFF:-true}
storage:
  filesystem:
    rootdirectory: $1/data
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$2
  secret: berth-cache-bench-secret
${3:-}
EOF
}

# --- the upstream: a plain distribution, access log on (stdout), one line per request ---
UP_DIR=$WORK/upstream
mkdir -p "$UP_DIR/data"
read -r UP_PORT <<<"$(free_ports 1)"
DIST_LOG_LEVEL=info DIST_ACCESSLOG_OFF=false dist_config "$UP_DIR" "$UP_PORT"
env "${ENV_UNSET[@]}" docker-registry serve "$UP_DIR/config.yml" >"$UP_DIR/access.log" 2>"$UP_DIR/log" &
UP_PID=$!
OUR_PIDS+=("$UP_PID")
UP=http://127.0.0.1:$UP_PORT
wait_http "$UP_PID" "$UP/v2/" || { tail -n 20 "$UP_DIR/log" >&2; die "upstream distribution did not start"; }
log "upstream: distribution $DIST_VERSION at $UP (pid $UP_PID)"

log "seeding the upstream: ${BLOB_MIB} MiB blob, config, manifest $REPO:$TAG ..."
push_mono "$UP" "$BLOB" "sha256:$BLOB_HEX" || die "pushing the blob to the upstream failed"
push_mono "$UP" "$CONFIG" "sha256:$CONFIG_HEX" || die "pushing the config to the upstream failed"
code=$(req -X PUT -H "Content-Type: $MT_MANIFEST" --data-binary "@$MANIFEST" "$UP/v2/$REPO/manifests/$TAG")
[[ $code == 201 ]] || die "manifest PUT to the upstream -> HTTP $code $(head -c 300 "$WORK/b")"
code=$(req -I "$UP/v2/$REPO/blobs/sha256:$BLOB_HEX")
[[ $code == 200 && $(hdr content-length) == "$BLOB_SIZE" ]] || die "upstream HEAD of the blob -> HTTP $code"
rm -f "$BLOB" # the upstream holds it now; frees page cache

# Upstream fetch counting: the access log is Apache combined format on the upstream's stdout,
# written when a request completes: ... "GET /v2/<repo>/blobs/sha256:<hex> HTTP/1.1" 200 ...
up_lines() { awk 'END { print NR }' "$UP_DIR/access.log"; }
up_count() { # FROM_LINE METHOD PATH: requests after line FROM_LINE with that method and path
    awk -v from="$1" -v want="\"$2 $3 HTTP/" 'NR > from && index($0, want) { n++ } END { print n + 0 }' "$UP_DIR/access.log"
}
BLOB_PATH=/v2/$REPO/blobs/sha256:$BLOB_HEX

# --- the caches (started fresh for each cold phase) ---
declare -A PID=() BASE=() DATA=()
start_cache() { # NAME DIR: start cache NAME with an empty data dir DIR; sets PID BASE DATA
    local s=$1 dir=$2 port i addr
    rm -rf "$dir"
    mkdir -p "$dir/data"
    read -r port <<<"$(free_ports 1)"
    DATA[$s]=$dir/data
    if [[ $s == berth ]]; then
        cat >"$dir/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
log = "warn"
[storage]
data_dir = "$dir/data"
[[upstream]]
name = "$UPNAME"
url = "$UP"
EOF
        env -u RUST_LOG "$BERTH" serve --config "$dir/config.toml" >"$dir/stdout" 2>"$dir/stderr" &
        PID[$s]=$!
        OUR_PIDS+=("${PID[$s]}")
        BASE[$s]=http://127.0.0.1:$port
        for ((i = 0; i < 300; i++)); do
            grep -q '^berth listening on http://' "$dir/stdout" 2>/dev/null && break
            kill -0 "${PID[$s]}" 2>/dev/null || break
            sleep 0.1
        done
        addr=$(sed -n 's#^berth listening on http://\([^ ]*\).*#\1#p' "$dir/stdout" | head -1)
        [[ -n $addr ]] && BASE[$s]=http://$addr
    else
        dist_config "$dir" "$port" "proxy:
  remoteurl: $UP"
        env "${ENV_UNSET[@]}" docker-registry serve "$dir/config.yml" >"$dir/stdout" 2>"$dir/stderr" &
        PID[$s]=$!
        OUR_PIDS+=("${PID[$s]}")
        BASE[$s]=http://127.0.0.1:$port
    fi
    if ! wait_http "${PID[$s]}" "${BASE[$s]}/v2/"; then
        tail -n 20 "$dir"/stdout "$dir"/stderr >&2 || true
        die "$s did not start (GET /v2/ != 200)"
    fi
}
stop_cache() { # NAME: records the process's VmHWM into hwm.NAME (max over its processes), stops it
    local s=$1 kib
    kill -0 "${PID[$s]}" 2>/dev/null || { err "$s died during the benchmark"; R[hwm_dead.$s]=1; }
    kib=$(vmhwm_kib "${PID[$s]}")
    ((kib > ${R[hwm_kib.$s]:-0})) && R[hwm_kib.$s]=$kib
    RAW+=("vmhwm_kib.$s.pid${PID[$s]}=$kib")
    stop_pid "${PID[$s]}"
}
cache_repo() { if [[ $1 == berth ]]; then printf '%s/%s' "$UPNAME" "$REPO"; else printf '%s' "$REPO"; fi; }
blob_url() { printf '%s/v2/%s/blobs/sha256:%s' "${BASE[$1]}" "$(cache_repo "$1")" "$BLOB_HEX"; }
cached_file() { # NAME: where the cache keeps the committed blob
    if [[ $1 == berth ]]; then
        printf '%s/blobs/sha256/%s/%s' "${DATA[$1]}" "${BLOB_HEX:0:2}" "$BLOB_HEX"
    else
        printf '%s/docker/registry/v2/blobs/sha256/%s/%s/data' "${DATA[$1]}" "${BLOB_HEX:0:2}" "$BLOB_HEX"
    fi
}
wait_committed() { # NAME: wait (bounded) until the cache holds the whole blob; prints seconds waited
    local t0 i f
    t0=$(now)
    f=$(cached_file "$1")
    for ((i = 0; i < SETTLE_MAX * 10; i++)); do
        [[ $(stat -c %s "$f" 2>/dev/null) == "$BLOB_SIZE" ]] && { elapsed "$t0" "$(now)"; return 0; }
        sleep 0.1
    done
    elapsed "$t0" "$(now)"
    return 1
}
manifest_check() { # NAME: GET the manifest by tag through the cache, as a client would first
    local code
    code=$(req -H "Accept: $MT_MANIFEST" "${BASE[$1]}/v2/$(cache_repo "$1")/manifests/$TAG")
    if [[ $code == 200 && $(sha_file "$WORK/b") == "$MANIFEST_HEX" ]]; then return 0; fi
    err "$1: GET manifest by tag -> HTTP $code, body $(head -c 200 "$WORK/b")"
    return 1
}

# pull N URL [null]: N curl processes started together. Each writes the blob to its own file in
# $OUT, or, with "null", to /dev/null. Sets P_WALL (s, from launching the first curl to the exit
# of the last) and P_OK (clients that got HTTP 200 and the full size, and, when written to files,
# bytes whose sha256 is the blob's). Digests are checked after the clock stops: the first good
# copy is hashed, every other copy is compared with it byte for byte (cmp), which proves the
# same sha256 at a fraction of the CPU; a copy that differs is hashed to report its digest.
P_WALL=ERR P_OK=0
pull() {
    local n=$1 url=$2 sink=${3:-files} i p t0 t1 code size h ref= dst
    local -a pids=()
    rm -f "$OUT"/c.* "$WORK"/w.* "$WORK"/e.*
    t0=$(now)
    for ((i = 0; i < n; i++)); do
        if [[ $sink == null ]]; then dst=/dev/null; else dst=$OUT/c.$i; fi
        curl -sS --max-time "$CURL_MAX" -o "$dst" -w '%{http_code} %{size_download}' "$url" >"$WORK/w.$i" 2>"$WORK/e.$i" &
        pids+=($!)
        OUR_PIDS+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; forget_pid "$p"; done
    t1=$(now)
    P_WALL=$(elapsed "$t0" "$t1")
    P_OK=0
    for ((i = 0; i < n; i++)); do
        code= size= h=
        read -r code size <"$WORK/w.$i" || true
        if [[ $code != 200 || $size != "$BLOB_SIZE" ]]; then
            err "client $i: HTTP ${code:-?}, ${size:-?} bytes (want $BLOB_SIZE) $(head -c 200 "$WORK/e.$i")"
            continue
        fi
        if [[ $sink == null ]]; then
            P_OK=$((P_OK + 1))
        elif [[ -n $ref ]] && timeout 300 cmp -s "$ref" "$OUT/c.$i"; then
            P_OK=$((P_OK + 1))
        else
            h=$(sha_file "$OUT/c.$i")
            if [[ $h == "$BLOB_HEX" ]]; then
                P_OK=$((P_OK + 1))
                ref=$OUT/c.$i
            else
                err "client $i: got $size bytes with sha256 $h (want $BLOB_HEX)"
            fi
        fi
    done
    rm -f "$OUT"/c.*
}

# ---------------------------------------------------------------------------------------------
# 3. the three phases, one cache after the other (never both at once)
# ---------------------------------------------------------------------------------------------
# CPU accounting, to tell whether other work shared the host: busy ticks of the whole machine
# minus those of this script's process tree (reaped children, plus the still running upstream)
our_ticks
CPU0=$(cpu_busy) OURS0=$OUR_TICKS UP0=$(proc_ticks "$UP_PID") T_PHASES0=$(now)
for s in "${CACHES[@]}"; do
    # --- phase 1: fresh cache, one client ---
    start_cache "$s" "$WORK/$s/cold1"
    log "$s ready at ${BASE[$s]} (pid ${PID[$s]}); phase 1: one client, cold ..."
    ln0=$(up_lines)
    manifest_check "$s" && set_r manifest_ok "$s" yes || set_r manifest_ok "$s" no
    timeout 300 sync || true
    pull 1 "$(blob_url "$s")"
    set_r t1 "$s" "$P_WALL"
    set_r ok1 "$s" "$P_OK/1"
    if ((P_OK == 1)); then set_r mibs1 "$s" "$(mib_per_s "$BLOB_SIZE" "$P_WALL")"; else set_r mibs1 "$s" ERR; fi
    w=$(wait_committed "$s") && RAW+=("committed_after_s.cold1.$s=$w") || { err "$s: blob not in its storage ${w}s after phase 1"; RAW+=("committed_after_s.cold1.$s=never(${w}s)"); }
    sleep 0.5 # the upstream logs a request when it completes
    set_r up1 "$s" "$(up_count "$ln0" GET "$BLOB_PATH")"
    RAW+=("upstream_blob_head.cold1.$s=$(up_count "$ln0" HEAD "$BLOB_PATH")")
    RAW+=("upstream_manifest_get.cold1.$s=$(up_count "$ln0" GET "/v2/$REPO/manifests/$TAG")")
    log "$s: T1 ${R[t1.$s]} s, ${R[mibs1.$s]} MiB/s, upstream blob GETs ${R[up1.$s]}"
    stop_cache "$s"
    rm -rf "$WORK/$s/cold1"

    # --- phase 2: fresh cache, CLIENTS clients at once ---
    start_cache "$s" "$WORK/$s/coldn"
    log "$s ready at ${BASE[$s]} (pid ${PID[$s]}); phase 2: $CLIENTS clients, cold ..."
    ln0=$(up_lines)
    manifest_check "$s" || true
    timeout 300 sync || true
    pull "$CLIENTS" "$(blob_url "$s")"
    set_r tn "$s" "$P_WALL"
    set_r okn "$s" "$P_OK/$CLIENTS"
    if ((P_OK == CLIENTS)); then set_r mibsn "$s" "$(mib_per_s "$((CLIENTS * BLOB_SIZE))" "$P_WALL")"; else set_r mibsn "$s" ERR; fi
    w=$(wait_committed "$s") && RAW+=("committed_after_s.coldn.$s=$w") || { err "$s: blob not in its storage ${w}s after phase 2"; RAW+=("committed_after_s.coldn.$s=never(${w}s)"); }
    sleep 0.5
    set_r upn "$s" "$(up_count "$ln0" GET "$BLOB_PATH")"
    RAW+=("upstream_blob_head.coldn.$s=$(up_count "$ln0" HEAD "$BLOB_PATH")")
    RAW+=("upstream_ping.coldn.$s=$(up_count "$ln0" GET /v2/)")
    RAW+=("upstream_requests.coldn.$s=$(($(up_lines) - ln0))")
    set_r ratio "$s" "$(awk -v a="${R[tn.$s]}" -v b="${R[t1.$s]}" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b == 0) print "ERR"; else printf "%.2f", a / b }')"
    log "$s: T$CLIENTS ${R[tn.$s]} s (${R[ratio.$s]} x T1), ${R[okn.$s]} digests correct, upstream blob GETs ${R[upn.$s]}"

    # --- phase 3: same process, now warm: to /dev/null (serving speed), then to files (the
    #     cold run's sink, digests checked) ---
    log "$s: phase 3: $CLIENTS clients, warm ..."
    ln0=$(up_lines)
    timeout 300 sync || true
    pull "$CLIENTS" "$(blob_url "$s")" null
    set_r twn "$s" "$P_WALL"
    if ((P_OK == CLIENTS)); then set_r mibswn "$s" "$(mib_per_s "$((CLIENTS * BLOB_SIZE))" "$P_WALL")"; else set_r mibswn "$s" ERR; fi
    pull "$CLIENTS" "$(blob_url "$s")"
    set_r tw "$s" "$P_WALL"
    set_r okw "$s" "$P_OK/$CLIENTS"
    if ((P_OK == CLIENTS)); then set_r mibsw "$s" "$(mib_per_s "$((CLIENTS * BLOB_SIZE))" "$P_WALL")"; else set_r mibsw "$s" ERR; fi
    set_r coldwarm "$s" "$(awk -v a="${R[tn.$s]}" -v b="${R[tw.$s]}" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b == 0) print "ERR"; else printf "%.2f", a / b }')"
    sleep 0.5
    set_r upw "$s" "$(up_count "$ln0" GET "$BLOB_PATH")"
    log "$s: warm ${R[mibswn.$s]} MiB/s aggregate to /dev/null, ${R[mibsw.$s]} MiB/s to files, ${R[okw.$s]} digests correct, upstream blob GETs ${R[upw.$s]}"
    stop_cache "$s"
    if [[ ${R[hwm_dead.$s]:-0} == 1 ]]; then set_r rss "$s" ERR; else set_r rss "$s" "$(awk -v k="${R[hwm_kib.$s]:-0}" 'BEGIN { printf "%.1f", k / 1024 }')"; fi
    rm -rf "$WORK/$s/coldn"
done
RAW+=("upstream_requests_total=$(up_lines)")
our_ticks
FOREIGN=$(awk -v busy="$(($(cpu_busy) - CPU0))" -v ours="$((OUR_TICKS - OURS0 + $(proc_ticks "$UP_PID") - UP0))" \
    -v secs="$(elapsed "$T_PHASES0" "$(now)")" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
    'BEGIN { f = (busy - ours) / hz / secs / n * 100; if (f < 0) f = 0; printf "%.0f", f }')
RAW+=("phases_wall_s=$(elapsed "$T_PHASES0" "$(now)")" "foreign_cpu_percent=$FOREIGN" "cpu_busy_ticks=$(($(cpu_busy) - CPU0))" "our_cpu_ticks=$((OUR_TICKS - OURS0 + $(proc_ticks "$UP_PID") - UP0))")

# ---------------------------------------------------------------------------------------------
# 4. report
# ---------------------------------------------------------------------------------------------
num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
ratio() { if num "$1" && num "$2" && [[ $2 != 0 && $2 != 0.0 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; else echo "-"; fi; }
le() { num "$1" && num "$2" && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
status() { # CACHE CHECK...: MET / NOT MET / n/a
    local s=$1
    shift
    if [[ $s == berth && -z $BERTH ]]; then echo "n/a"; elif "$@"; then echo "MET"; else echo "NOT MET"; fi
}
t_one_fetch() { [[ $(get_r upn "$1") == 1 ]]; }
t_ratio() { le "$(get_r ratio "$1")" "$RATIO_MAX"; }
t_digests() { [[ $(get_r okn "$1") == "$CLIENTS/$CLIENTS" && $(get_r okw "$1") == "$CLIENTS/$CLIENTS" && $(get_r ok1 "$1") == 1/1 ]]; }
t_rss() { le "$(get_r rss "$1")" "$RSS_MAX"; }
report() {
    local b=berth d=distribution-proxy c st
    echo
    echo "berth cache benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
    echo "host: $(nproc) cores, $(awk '/^model name/ { $1 = $2 = $3 = ""; print; exit }' /proc/cpuinfo | sed 's/^ *//'), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "caches: berth=${BERTH_SRC:-not built}; distribution $DIST_VERSION proxy mode"
    echo "upstream: distribution $DIST_VERSION on loopback, one ${BLOB_MIB} MiB random blob in $REPO:$TAG; fetches counted in its access log"
    echo "other processes used ${FOREIGN}% of the host's CPU during the phases (machine busy time minus this script's processes)"
    if ((FOREIGN > 10)); then
        echo "WARNING: other work shared this host during the run; times and rates are depressed and noisy"
    fi
    echo "clients: curl, each writes to its own file in $OUT_BASE; sha256 checked after the clock stops; cold = fresh data dir and process"
    echo
    printf '%-40s %14s %19s %11s\n' metric berth distribution-proxy berth/dist
    printf '%-40s %14s %19s %11s\n' ---------------------------------------- -------------- ------------------- -----------
    row() { printf '%-40s %14s %19s %11s\n' "$1" "$(get_r "$2" $b)" "$(get_r "$2" $d)" "${3:-$(ratio "$(get_r "$2" $b)" "$(get_r "$2" $d)")}"; }
    row "cold, 1 client: T1 (s)" t1
    row "cold, 1 client: MiB/s" mibs1
    row "cold, 1 client: upstream blob GETs" up1 -
    row "cold, $CLIENTS clients: T$CLIENTS (s)" tn
    row "cold, $CLIENTS clients: T$CLIENTS/T1" ratio
    row "cold, $CLIENTS clients: aggregate MiB/s" mibsn
    row "cold, $CLIENTS clients: sha256 correct" okn -
    row "cold, $CLIENTS clients: upstream blob GETs" upn -
    row "warm, $CLIENTS clients: MiB/s to /dev/null" mibswn
    row "warm, $CLIENTS clients: MiB/s to files" mibsw
    row "warm, $CLIENTS clients: sha256 correct" okw -
    row "warm, $CLIENTS clients: upstream blob GETs" upw -
    row "cold T$CLIENTS / warm T$CLIENTS (both to files)" coldwarm
    row "peak RSS VmHWM over the run (MiB)" rss
    echo
    printf 'targets (for berth; distribution-proxy shown against the same bar):  %-8s %s\n' berth distribution-proxy
    target() { # DESCRIPTION CHECK-FUNCTION
        st=$(status $b "$2" $b)
        [[ $st == "NOT MET" ]] && : >"$WORK/unmet"
        printf '  %-66s %-8s %s\n' "$1" "$st" "$(status $d "$2" $d)"
    }
    target "exactly 1 upstream GET of the blob for $CLIENTS cold clients" t_one_fetch
    target "T$CLIENTS <= $RATIO_MAX x T1" t_ratio
    target "all digests correct (1 + $CLIENTS cold + $CLIENTS warm)" t_digests
    target "peak RSS <= $RSS_MAX MiB (the ${BLOB_MIB} MiB blob is never held in memory)" t_rss
    [[ -n $BERTH ]] || echo "  (berth: not built - berth column and targets skipped)"
}
write_results
if [[ $STRICT == 1 && -e $WORK/unmet ]]; then exit 1; fi
exit 0
