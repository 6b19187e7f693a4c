#!/usr/bin/env bash
# berth auth benchmark: what access control costs on the hottest read, a manifest GET by tag.
# berth with access control off and on (Basic and Bearer), and CNCF distribution 2.8 (Debian
# `docker-registry`) without auth and with htpasswd auth, all on loopback on this machine,
# each with a fresh temp data directory.
#
# This is a benchmark, not a test: it prints numbers. It exits non-zero when something is
# broken: a server does not start, setup fails, or any measured request was not a 200.
# See bench/README.md.
#
# Environment (all optional):
#   BERTH_BIN            berth binary to use; unset: `cargo build --release -p berth` (in
#                        CARGO_TARGET_DIR, default /var/cache/berth-main-target)
#   BENCH_AUTH_RUNS      rounds; each round measures all five cases once, median reported
#                        (default 3)
#   BENCH_WRK_DURATION   wrk duration per measurement               (default 10s)
#   BENCH_WRK_WARMUP     wrk warm-up before each measurement, 0=off (default 2s)
#   BENCH_WRK_CONNS      wrk connections                            (default 64)
#   BENCH_WRK_THREADS    wrk threads                                (default 2)
#   BENCH_WRK_TIMEOUT    wrk per-request timeout                    (default 30s; distribution
#                        with htpasswd answers in seconds under 64 connections)
#   BENCH_BCRYPT_COST    bcrypt cost of the htpasswd entry          (default 10)
#   BENCH_TMPDIR         where the temp work dir goes               (default /tmp)
#   BENCH_AUTH_RESULTS   results file          (default bench/auth-results-latest.txt)
#   BERTH_RUST_LOG       RUST_LOG for berth                         (default warn)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
BENCH_NAME=auth-bench

RUNS=${BENCH_AUTH_RUNS:-3}
WRK_DURATION=${BENCH_WRK_DURATION:-10s}
WRK_WARMUP=${BENCH_WRK_WARMUP:-2s}
WRK_CONNS=${BENCH_WRK_CONNS:-64}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-30s}
COST=${BENCH_BCRYPT_COST:-10}
TMP_BASE=${BENCH_TMPDIR:-/tmp}
RESULTS=${BENCH_AUTH_RESULTS:-$HERE/auth-results-latest.txt}
REPO=bench/app          # repository name used everywhere
TAG=latest
USER_NAME=bench
CURL_MAX=60             # hard cap (s) on any single curl
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json

for tool in curl wrk docker-registry python3 awk openssl base64 timeout; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install -y wrk docker-registry curl openssl)"
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_AUTH_RUNS must be a positive integer"

# ---------------------------------------------------------------------------------------------
# work dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
bench_workdir berth-auth-bench

HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

# ---------------------------------------------------------------------------------------------
# HTTP helpers (registry API). They never exit; they return 1 and print an error.
# CURL_AUTH holds the credentials (curl arguments) for the server being set up.
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------
write_report_lua
settle() { # PID: wait (up to 30 s) until the process is idle (<= 1 tick in 200 ms). A server
    # may still be working off requests the warm-up left in flight (distribution finishes a
    # bcrypt for a connection that wrk has closed), which would otherwise land on the next run.
    local i a b
    for ((i = 0; i < 150; i++)); do
        a=$(proc_ticks "$1"); sleep 0.2; b=$(proc_ticks "$1")
        ((b - a <= 1)) && return 0
    done
    err "pid $1 still busy 30 s after the warm-up"
}
wrk_warmup() { # URL [wrk args...]: an unmeasured run of BENCH_WRK_WARMUP (0: none)
    local url=$1 secs
    shift
    [[ $WRK_WARMUP != 0 ]] || return 0
    secs=${WRK_WARMUP%s}
    timeout $((secs + 60)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_WARMUP" --timeout "$WRK_TIMEOUT" -s "$WORK/report.lua" "$@" "$url" >/dev/null 2>&1 || true
}
run_wrk() { # URL [wrk args...] -> sets WRK_LAST to the BENCH line; returns 1 on any error
    local url=$1 secs
    shift
    secs=${WRK_DURATION%s}
    timeout $((secs + 90)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --timeout "$WRK_TIMEOUT" --latency -s "$WORK/report.lua" "$@" "$url" >"$WORK/wrk.out" 2>&1 || true
    WRK_LAST=$(grep '^BENCH ' "$WORK/wrk.out" | tail -1)
    [[ -n $WRK_LAST ]] || { err "wrk produced no result:"; cat "$WORK/wrk.out" >&2; return 1; }
    local nerr
    nerr=$(($(wrk_field err_status) + $(wrk_field err_connect) + $(wrk_field err_read) + $(wrk_field err_write) + $(wrk_field err_timeout)))
    if ((nerr > 0)); then err "wrk $url: $WRK_LAST"; grep -E 'Non-2xx|Socket errors' "$WORK/wrk.out" >&2 || true; return 1; fi
    (($(wrk_field requests) > 0)) || { err "wrk $url: no requests completed: $WRK_LAST"; return 1; }
}

# ---------------------------------------------------------------------------------------------
# 0. berth binary (copied into the work dir, so a rebuild during the run cannot swap it)
# ---------------------------------------------------------------------------------------------
find_berth "" /var/cache/berth-main-target
cp "$BERTH_SRC" "$WORK/berth-bin"
BERTH=$WORK/berth-bin
log "berth binary: $BERTH_SRC"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# 1. test data: a small OCI image (config + one 4 KiB layer + manifest), and the user
# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/data"
LAYER=$WORK/data/layer.bin
openssl rand 4096 >"$LAYER"
LAYER_HEX=$(sha_file "$LAYER")
CONFIG=$WORK/data/config.json
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$LAYER_HEX" >"$CONFIG"
CONFIG_HEX=$(sha_file "$CONFIG")
MANIFEST=$WORK/data/manifest.json
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$MT_MANIFEST" "$CONFIG_HEX" "$(stat -c %s "$CONFIG")" "$LAYER_HEX" 4096 >"$MANIFEST"
MANIFEST_HEX=$(sha_file "$MANIFEST")

PASSWORD=$(openssl rand -hex 16)
HTPASSWD=$WORK/htpasswd
t0=$(now)
printf '%s\n' "$PASSWORD" | "$BERTH" users add --cost "$COST" "$HTPASSWD" "$USER_NAME" >/dev/null ||
    die "berth users add failed"
BCRYPT_MS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
case $(cat "$HTPASSWD") in
    "$USER_NAME:\$2"?"\$$(printf '%02d' "$COST")\$"*) ;;
    *) die "unexpected htpasswd entry: $(cut -c1-14 "$HTPASSWD")" ;;
esac
BASIC="Basic $(printf '%s:%s' "$USER_NAME" "$PASSWORD" | base64 -w0)"
log "htpasswd: user $USER_NAME, bcrypt cost $COST ('berth users add' took ${BCRYPT_MS} ms, one hash + process start)"

# ---------------------------------------------------------------------------------------------
# 2. servers: berth off, berth on, distribution off, distribution htpasswd
# ---------------------------------------------------------------------------------------------
SERVERS=(berth_off berth_on dist_off dist_auth)
read -r PORT_B0 PORT_B1 PORT_D0 PORT_D1 <<<"$(free_ports 4)"
declare -A BASE=() PID=() PORT=([berth_off]=$PORT_B0 [berth_on]=$PORT_B1 [dist_off]=$PORT_D0 [dist_auth]=$PORT_D1)

start_berth() { # NAME WITH_AUTH(0|1)
    local d=$WORK/$1
    mkdir -p "$d/data"
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\n[storage]\ndata_dir = "%s"\n' "${PORT[$1]}" "$d/data"
        if [[ $2 == 1 ]]; then printf '[auth]\nhtpasswd = "%s"\ntoken_ttl = "1h"\n' "$HTPASSWD"; fi
    } >"$d/config.toml"
    RUST_LOG=${BERTH_RUST_LOG:-warn} "$BERTH" serve --config "$d/config.toml" >"$d/stdout" 2>"$d/stderr" &
    PID[$1]=$!
    OUR_PIDS+=("${PID[$1]}")
    BASE[$1]=http://127.0.0.1:${PORT[$1]}
}
declare -a ENV_UNSET=()
while IFS= read -r v; do ENV_UNSET+=(-u "$v"); done < <(env | awk -F= '/^REGISTRY_/ { print $1 }')
start_dist() { # NAME WITH_AUTH(0|1)
    local d=$WORK/$1
    mkdir -p "$d/data"
    {
        cat <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $d/data
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${PORT[$1]}
  secret: berth-bench-secret
EOF
        if [[ $2 == 1 ]]; then printf 'auth:\n  htpasswd:\n    realm: berth-bench\n    path: %s\n' "$HTPASSWD"; fi
    } >"$d/config.yml"
    env "${ENV_UNSET[@]}" docker-registry serve "$d/config.yml" >"$d/log" 2>&1 &
    PID[$1]=$!
    OUR_PIDS+=("${PID[$1]}")
    BASE[$1]=http://127.0.0.1:${PORT[$1]}
}
wait_ready() { # NAME [curl args]: GET /v2/ -> 200 within 30 s while the process lives
    local name=$1 i code
    shift
    for ((i = 0; i < 300; i++)); do
        kill -0 "${PID[$name]}" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$@" "${BASE[$name]}/v2/" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
start_berth berth_off 0
start_berth berth_on 1
start_dist dist_off 0
start_dist dist_auth 1
for s in "${SERVERS[@]}"; do
    a=()
    [[ $s == *_on || $s == *_auth ]] && a=(-H "Authorization: $BASIC")
    if ! wait_ready "$s" "${a[@]}"; then
        cat "$WORK/$s/"{stdout,stderr,log} 2>/dev/null >&2 || true
        die "$s did not start (GET /v2/ != 200)"
    fi
    log "$s ready at ${BASE[$s]} (pid ${PID[$s]})"
done

# ---------------------------------------------------------------------------------------------
# 3. access control really is on where it should be (and off where it should not)
# ---------------------------------------------------------------------------------------------
anon_code() { curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$@" || echo 000; }
for s in berth_on dist_auth; do
    c=$(anon_code "${BASE[$s]}/v2/")
    [[ $c == 401 ]] || die "$s: anonymous GET /v2/ -> HTTP $c, want 401 (is auth on?)"
    c=$(anon_code -u "$USER_NAME:wrong-$PASSWORD" "${BASE[$s]}/v2/")
    [[ $c == 401 ]] || die "$s: GET /v2/ with a wrong password -> HTTP $c, want 401"
done

# ---------------------------------------------------------------------------------------------
# 4. push the small image to each (Basic credentials where auth is on), read it back
# ---------------------------------------------------------------------------------------------
for s in "${SERVERS[@]}"; do
    CURL_AUTH=()
    [[ $s == *_on || $s == *_auth ]] && CURL_AUTH=(-H "Authorization: $BASIC")
    push_mono "${BASE[$s]}" "$LAYER" "sha256:$LAYER_HEX" || die "$s: pushing the layer failed"
    push_mono "${BASE[$s]}" "$CONFIG" "sha256:$CONFIG_HEX" || die "$s: pushing the config failed"
    code=$(req -X PUT -H "Content-Type: $MT_MANIFEST" --data-binary "@$MANIFEST" "${BASE[$s]}/v2/$REPO/manifests/$TAG")
    [[ $code == 201 ]] || die "$s: manifest PUT -> HTTP $code $(head -c 300 "$WORK/b")"
    code=$(req -H "Accept: $MT_MANIFEST" "${BASE[$s]}/v2/$REPO/manifests/$TAG")
    [[ $code == 200 && $(sha_file "$WORK/b") == "$MANIFEST_HEX" ]] || die "$s: GET manifest by tag -> HTTP $code, wrong body?"
    CURL_AUTH=()
    if [[ $s == berth_on || $s == dist_auth ]]; then
        c=$(anon_code -H "Accept: $MT_MANIFEST" "${BASE[$s]}/v2/$REPO/manifests/$TAG")
        [[ $c == 401 ]] || die "$s: anonymous manifest GET -> HTTP $c, want 401"
    fi
    log "$s: image pushed ($REPO:$TAG, manifest sha256:${MANIFEST_HEX:0:12}...)"
done

# the token for the Bearer case
code=$(req -H "Authorization: $BASIC" "${BASE[berth_on]}/auth/token?service=berth&scope=repository:$REPO:pull")
[[ $code == 200 ]] || die "GET /auth/token -> HTTP $code $(head -c 300 "$WORK/b")"
TOKEN=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$WORK/b") || die "no token in $(head -c 300 "$WORK/b")"
TOKEN_TTL=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("expires_in", "?"))' "$WORK/b")
BEARER="Bearer $TOKEN"
code=$(req -H "Authorization: $BEARER" -H "Accept: $MT_MANIFEST" "${BASE[berth_on]}/v2/$REPO/manifests/$TAG")
[[ $code == 200 && $(sha_file "$WORK/b") == "$MANIFEST_HEX" ]] || die "berth_on: manifest GET with the token -> HTTP $code"
log "token: ${#TOKEN} bytes, expires_in $TOKEN_TTL s"
rm -rf "$WORK/data"

# ---------------------------------------------------------------------------------------------
# 5. wrk, round-robin over the five cases, BENCH_AUTH_RUNS rounds
# ---------------------------------------------------------------------------------------------
CASES=(berth_off berth_basic berth_bearer dist_off dist_basic)
declare -A CASE_SERVER=([berth_off]=berth_off [berth_basic]=berth_on [berth_bearer]=berth_on [dist_off]=dist_off [dist_basic]=dist_auth)
declare -A CASE_AUTHZ=([berth_off]= [berth_basic]=$BASIC [berth_bearer]=$BEARER [dist_off]= [dist_basic]=$BASIC)
declare -A CASE_LABEL=(
    [berth_off]="berth, auth off, anonymous"
    [berth_basic]="berth, htpasswd, Basic"
    [berth_bearer]="berth, htpasswd, Bearer token"
    [dist_off]="distribution, auth off, anonymous"
    [dist_basic]="distribution, htpasswd, Basic"
)
declare -A V_RPS=() V_P99=() V_CPU=() V_OTHER=()
FAILED=0
for ((r = 1; r <= RUNS; r++)); do
    for c in "${CASES[@]}"; do
        s=${CASE_SERVER[$c]}
        a=(-H "Accept: $MT_MANIFEST")
        [[ -n ${CASE_AUTHZ[$c]} ]] && a+=(-H "Authorization: ${CASE_AUTHZ[$c]}")
        log "round $r/$RUNS: $c: wrk manifest GET by tag (${WRK_CONNS} conns, ${WRK_DURATION}) ..."
        # CPU accounting over the measured run (after the warm-up): the server's own ticks, and
        # the machine's busy ticks minus the server's and this script's (wrk included)
        wrk_warmup "${BASE[$s]}/v2/$REPO/manifests/$TAG" "${a[@]}"
        settle "${PID[$s]}"
        our_ticks
        busy0=$(cpu_busy) ours0=$OUR_TICKS srv0=$(proc_ticks "${PID[$s]}") t0=$(now)
        if run_wrk "${BASE[$s]}/v2/$REPO/manifests/$TAG" "${a[@]}"; then
            t1=$(now) srv1=$(proc_ticks "${PID[$s]}") busy1=$(cpu_busy)
            our_ticks
            n=$(wrk_field requests)
            V_RPS[$c]+=" $(wrk_field rps)"
            V_P99[$c]+=" $(us_to_ms "$(wrk_field p99_us)")"
            V_CPU[$c]+=" $(awk -v t="$((srv1 - srv0))" -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')"
            V_OTHER[$c]+=" $(awk -v b="$((busy1 - busy0))" -v s="$((srv1 - srv0))" -v o="$((OUR_TICKS - ours0))" -v hz="$HZ" -v c="$NCPU" -v a="$t0" -v z="$t1" \
                'BEGIN { x = (b - s - o) / (hz * c * (z - a)) * 100; if (x < 0) x = 0; printf "%.0f", x }')"
        else
            err "$c (round $r): a request failed or was not 200; see above"
            FAILED=1
            V_RPS[$c]+=" ERR" V_P99[$c]+=" ERR" V_CPU[$c]+=" ERR" V_OTHER[$c]+=" ERR"
        fi
        RAW+=("wrk.$c.round$r=${WRK_LAST#BENCH }")
        kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during the benchmark"
    done
done
for c in "${CASES[@]}"; do
    # shellcheck disable=SC2086 # word splitting of the space-separated run values is meant
    set_r rps "$c" "$(median ${V_RPS[$c]})"
    set_r p99 "$c" "$(median ${V_P99[$c]})"
    set_r cpu "$c" "$(median ${V_CPU[$c]})"
    set_r other "$c" "$(median ${V_OTHER[$c]})"
    RAW+=("rps.$c.runs=${V_RPS[$c]# }" "p99_ms.$c.runs=${V_P99[$c]# }" "cpu_us_per_req.$c.runs=${V_CPU[$c]# }" "other_cpu_pct.$c.runs=${V_OTHER[$c]# }")
done

# ---------------------------------------------------------------------------------------------
# 6. peak RSS (VmHWM), read while the servers are still alive
# ---------------------------------------------------------------------------------------------
for s in "${SERVERS[@]}"; do
    kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during the benchmark"
    set_r rss "$s" "$(awk -v k="$(vmhwm_kib "${PID[$s]}")" 'BEGIN { printf "%.1f", k / 1024 }')"
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# 7. report
# ---------------------------------------------------------------------------------------------
ratio() { # A B -> A/B or n/a
    awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b == 0) { print "n/a"; exit }
        r = a / b; if (r >= 100) printf "%.0fx", r; else if (r >= 0.1) printf "%.2fx", r; else printf "%.4fx", r }'
}
report() {
    echo
    echo "berth auth benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
    echo "host: $NCPU cores, $(awk '/^model name/ { $1 = $2 = $3 = ""; print; exit }' /proc/cpuinfo | sed 's/^ *//'), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); load average at start $LOAD0, at end $LOAD1"
    echo "servers: berth=$BERTH_SRC (built $(date -u -r "$BERTH_SRC" +%Y-%m-%dT%H:%M:%SZ)); distribution $(docker-registry --version 2>/dev/null | awk '{ print $NF }')"
    echo "GET /v2/$REPO/manifests/$TAG (Accept: $MT_MANIFEST); wrk -t${WRK_THREADS} -c${WRK_CONNS} -d${WRK_DURATION} --timeout ${WRK_TIMEOUT} (warm-up ${WRK_WARMUP}); median of $RUNS rounds"
    echo "htpasswd: one user, bcrypt cost $COST ('berth users add': ${BCRYPT_MS} ms incl. process start); berth token_ttl 1h (ES256)"
    echo
    printf '%-40s %10s %12s %9s %9s\n' case "req/s" "CPU us/req" "p99 ms" "other %"
    printf '%-40s %10s %12s %9s %9s\n' ---------------------------------------- ---------- ------------ --------- ---------
    local c
    for c in "${CASES[@]}"; do
        printf '%-40s %10s %12s %9s %9s\n' "${CASE_LABEL[$c]}" "$(get_r rps "$c")" "$(get_r cpu "$c")" "$(get_r p99 "$c")" "$(get_r other "$c")"
    done
    echo
    printf '%-40s %10s %12s\n' ratio "req/s" "CPU us/req"
    printf '%-40s %10s %12s\n' ---------------------------------------- ---------- ------------
    rrow() { printf '%-40s %10s %12s\n' "$1" "$(ratio "$(get_r rps "$2")" "$(get_r rps "$3")")" "$(ratio "$(get_r cpu "$2")" "$(get_r cpu "$3")")"; }
    rrow "berth Basic / berth off" berth_basic berth_off
    rrow "berth Bearer / berth off" berth_bearer berth_off
    rrow "distribution Basic / distribution off" dist_basic dist_off
    rrow "berth Basic / distribution Basic" berth_basic dist_basic
    echo
    printf 'peak RSS VmHWM (MiB): berth off %s, berth htpasswd %s (served Basic and Bearer), distribution off %s, distribution htpasswd %s\n' \
        "$(get_r rss berth_off)" "$(get_r rss berth_on)" "$(get_r rss dist_off)" "$(get_r rss dist_auth)"
    echo "CPU us/req: the server's user+system CPU time over the measured run / requests. other %: share of the"
    echo "host's CPU used by processes outside this script (other builds, benchmarks) during the measured run."
    if ((FAILED)); then echo; echo "FAILED: some requests were not 200 (see stderr); the affected cells are ERR"; fi
}
write_results
if ((FAILED)); then err "some measured requests were not 200"; exit 1; fi
exit 0
