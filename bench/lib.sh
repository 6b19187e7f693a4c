# Helpers the benchmark scripts share (run.sh, auth.sh, cache.sh, gc.sh). Sourced, not run:
# set BENCH_NAME (the log prefix) before logging, CURL_MAX before the HTTP helpers, and call
# bench_workdir where the work directory is wanted. Defines functions and empty stores only.
# shellcheck shell=bash

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
err() { printf '[%s %s] ERROR: %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { err "$*"; exit 2; }

# ---------------------------------------------------------------------------------------------
# work dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
declare -a OUR_PIDS=() # every server and client the script started (and has not reaped)
stop_ours() { # TERM every process in OUR_PIDS, up to 5 s grace each, then KILL
    local p i
    for p in "${OUR_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${OUR_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}
# The default cleanup; a script that keeps or removes more redefines it (the trap calls
# whichever is defined at exit).
cleanup() {
    stop_ours
    rm -rf "$WORK"
}
bench_workdir() { # PREFIX: WORK=a fresh dir under $TMP_BASE; cleanup on exit, 130 on a signal
    WORK=$(mktemp -d "$TMP_BASE/$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

now() { date +%s.%N; }
# free_ports N: N distinct free loopback ports (all held open until all are chosen)
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
}
mib_per_s() { awk -v b="$1" -v t="$2" 'BEGIN { if (t !~ /^[0-9.]+$/ || t <= 0) print "ERR"; else printf "%.1f", b / 1048576 / t }'; }
median() { printf '%s\n' "$@" | grep -v ERR | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "ERR"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# Random data from `openssl rand` (userspace AES-CTR DRBG, ~5x faster than /dev/urandom here)
# and digests from `openssl dgst` (~2x faster than coreutils sha256sum); both fall back to
# /dev/urandom and sha256sum.
if command -v openssl >/dev/null; then
    sha_file() { openssl dgst -sha256 -r "$1" | awk '{ print $1 }'; }
    rand_file() { # in <= 256 MiB pieces (openssl rand takes an int)
        local left=$2 n
        while ((left > 0)); do n=$((left > 268435456 ? 268435456 : left)); openssl rand "$n"; left=$((left - n)); done >"$1"
    }
else
    sha_file() { sha256sum "$1" | awk '{ print $1 }'; }
    rand_file() { head -c "$2" /dev/urandom >"$1"; }
fi
us_to_ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
vmhwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU accounting, to tell whether other work shared the host.
cpu_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
proc_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; } # utime + stime
our_ticks() { # self and reaped children, from `times` (run in this shell, not a subshell)
    times >"$WORK/times"
    OUR_TICKS=$(awk -v hz="$(getconf CLK_TCK)" '{ for (i = 1; i <= NF; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } } END { printf "%d", t * hz }' "$WORK/times")
}

# ---------------------------------------------------------------------------------------------
# HTTP helpers (registry API). They never exit; they return 1 and print an error.
# CURL_AUTH holds credentials (curl arguments) for the server being set up, if any.
# ---------------------------------------------------------------------------------------------
declare -a CURL_AUTH=()
req() { # ARGS...: curl, response headers -> $WORK/h, body -> $WORK/b; prints the status code
    curl -sS --max-time "$CURL_MAX" -o "$WORK/b" -D "$WORK/h" -w '%{http_code}' -H 'Expect:' "${CURL_AUTH[@]}" "$@" || echo 000
}
hdr() { # NAME: last value of header NAME in $WORK/h
    tr -d '\r' <"$WORK/h" | awk -v n="$(printf '%s' "$1" | tr 'A-Z' 'a-z')" '
        index(tolower($0), n ":") == 1 { v = substr($0, length(n) + 2); sub(/^[ \t]+/, "", v) }
        END { print v }'
}
abs_url() { # BASE LOCATION -> absolute URL (Location may be absolute or relative)
    case $2 in
        http://* | https://*) printf '%s' "$2" ;;
        /*) printf '%s%s' "$1" "$2" ;;
        *) printf '%s/%s' "$1" "$2" ;;
    esac
}
add_query() { case $1 in *\?*) printf '%s&%s' "$1" "$2" ;; *) printf '%s?%s' "$1" "$2" ;; esac; }
UPLOAD_URL=
upload_start() { # BASE -> sets UPLOAD_URL
    local code loc
    code=$(req -X POST -H 'Content-Length: 0' "$1/v2/$REPO/blobs/uploads/")
    [[ $code == 202 ]] || { err "POST $1/v2/$REPO/blobs/uploads/ -> HTTP $code $(head -c 300 "$WORK/b")"; return 1; }
    loc=$(hdr location)
    [[ -n $loc ]] || { err "upload POST: no Location header"; return 1; }
    UPLOAD_URL=$(abs_url "$1" "$loc")
}
push_mono() { # BASE FILE DIGEST: POST, then PUT ?digest= with the whole body streamed by curl -T
    local code
    upload_start "$1" || return 1
    code=$(req -X PUT -T "$2" -H 'Content-Type: application/octet-stream' "$(add_query "$UPLOAD_URL" "digest=$3")")
    [[ $code == 201 ]] || { err "monolithic PUT -> HTTP $code $(head -c 300 "$WORK/b")"; return 1; }
}

# ---------------------------------------------------------------------------------------------
# wrk: report.lua prints one BENCH line that wrk_field reads
# ---------------------------------------------------------------------------------------------
write_report_lua() { # -> $WORK/report.lua
    cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
}
WRK_LAST=
wrk_field() { printf '%s\n' "$WRK_LAST" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }

# ---------------------------------------------------------------------------------------------
# the berth binary
# ---------------------------------------------------------------------------------------------
# find_berth WITHOUT [TARGET_DIR]: sets BERTH_SRC to $BERTH_BIN, else to a fresh
# `cargo build --release -p berth` (in CARGO_TARGET_DIR, default TARGET_DIR or
# /var/cache/berth-target). WITHOUT says what the run goes on with when there is no berth
# (BENCH_SKIP_BERTH=1 or a failed build: BERTH_SRC empty); empty WITHOUT: berth is required.
find_berth() {
    BERTH_SRC=
    if [[ -n $1 && ${BENCH_SKIP_BERTH:-0} == 1 ]]; then
        log "berth: skipped (BENCH_SKIP_BERTH=1)"
    elif [[ -n ${BERTH_BIN:-} ]]; then
        [[ -x $BERTH_BIN ]] || die "BERTH_BIN=$BERTH_BIN is not executable"
        BERTH_SRC=$BERTH_BIN
    else
        export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${2:-/var/cache/berth-target}}
        log "building berth: cargo build --release -p berth (CARGO_TARGET_DIR=$CARGO_TARGET_DIR) ..."
        if (cd "$ROOT" && timeout "${BENCH_BUILD_TIMEOUT:-3600}" cargo build --release -p berth) >"$WORK/build.log" 2>&1 &&
            [[ -x $CARGO_TARGET_DIR/release/berth ]]; then
            BERTH_SRC=$CARGO_TARGET_DIR/release/berth
        else
            tail -n 15 "$WORK/build.log" >&2 || true
            [[ -n $1 ]] || die "berth: not built (this benchmark is about berth; there is nothing to compare without it)"
            log "berth: not built (continuing with $1 only)"
        fi
    fi
}

# ---------------------------------------------------------------------------------------------
# results store
# ---------------------------------------------------------------------------------------------
declare -A R=()
declare -a RAW=()
set_r() { R[$1.$2]=$3; RAW+=("$1.$2=$3"); }
get_r() { printf '%s' "${R[$1.$2]:--}"; }
# write_results: the script's `report` to stdout and, with every raw value, to $RESULTS
write_results() {
    report | tee "$WORK/report.txt"
    {
        cat "$WORK/report.txt"
        echo
        echo "raw:"
        printf '  %s\n' "${RAW[@]}"
    } >"$RESULTS"
    log "results written to $RESULTS"
}
