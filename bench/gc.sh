#!/usr/bin/env bash
# berth garbage-collection benchmark: seed a large registry straight through the storage
# layer (crates/berth/examples/gc_seed.rs), serve it on loopback, measure pull latency,
# then run `berth gc --dry-run` and `berth gc` while the same pull load (and a trickle of
# small pushes) runs, and check what is left. See bench/README.md.
#
# Exits 0 when every check passes, 1 when a check fails, 2 when setup fails.
#
# Environment (all optional):
#   BERTH_BIN               berth binary; unset: cargo build --release -p berth
#   GC_SEED_BIN             seeder binary; unset: cargo build --release -p berth --example gc_seed
#                           (both in CARGO_TARGET_DIR, default /var/cache/berth-target)
#   BENCH_GC_BLOBS          blobs to seed                                 (default 100000)
#   BENCH_GC_MANIFESTS      manifests to seed (half tagged)               (default 10000)
#   BENCH_GC_WRK_DURATION   baseline / after-GC load duration             (default 10s)
#   BENCH_GC_WRK_CONNS      wrk connections                               (default 4)
#   BENCH_GC_WRK_THREADS    wrk threads                                   (default 2)
#   BENCH_GC_PATHS          tagged images whose manifest and blobs the load cycles through
#                                                                         (default 1000)
#   BENCH_GC_FRESH_EVERY    1 request in this many is a tagged manifest not pulled before (its
#                           pull is recorded: a SQLite write); 0 = none      (default 100)
#   BENCH_GC_SAMPLE         manifests checked afterwards, per kind        (default 200)
#   BENCH_TMPDIR            where the temp work dir goes                  (default /tmp)
#   BENCH_GC_RESULTS        results file              (default bench/gc-results-latest.txt)
#   BENCH_GC_KEEP=1         keep the work dir (data, logs, gc output) and print its path
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
BENCH_NAME=gc-bench

N_BLOBS=${BENCH_GC_BLOBS:-100000}
N_MANIFESTS=${BENCH_GC_MANIFESTS:-10000}
WRK_DURATION=${BENCH_GC_WRK_DURATION:-10s}
WRK_CONNS=${BENCH_GC_WRK_CONNS:-4}
WRK_THREADS=${BENCH_GC_WRK_THREADS:-2}
N_PATHS=${BENCH_GC_PATHS:-1000}
FRESH_EVERY=${BENCH_GC_FRESH_EVERY:-100}
SAMPLE=${BENCH_GC_SAMPLE:-200}
TMP_BASE=${BENCH_TMPDIR:-/tmp}
RESULTS=${BENCH_GC_RESULTS:-$HERE/gc-results-latest.txt}
KEEP=${BENCH_GC_KEEP:-0}
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
GC_TIMEOUT=3600      # hard cap (s) on one `berth gc`
LOAD_MAX=3600        # hard cap (s) on a load run that is stopped by signal

for tool in curl wrk awk sha256sum find timeout; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install -y wrk curl)"
done

# ---------------------------------------------------------------------------------------------
# work dir, processes we start, cleanup
# ---------------------------------------------------------------------------------------------
bench_workdir berth-gc-bench
cleanup() {
    stop_ours
    if [[ $KEEP == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
}
# anything failing unexpectedly (set -e) says where, and is a setup failure, not a check
trap 'rc=$?; if ((BASH_SUBSHELL == 0)); then err "unexpected failure (exit $rc) at line $LINENO: $BASH_COMMAND"; exit 2; fi' ERR

secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }
# blob files written by the seeder (the probe pushes come after config.toml is written)
# Other work on the host skews every number here (2 cores). foreign_cpu: cores busy over 1 s in
# processes outside this script's process group, with the busiest names.
MY_PGRP=$(ps -o pgid= -p $$ | tr -d ' ')
proc_cpu() { # lines: pid pgrp ticks comm
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
        o = index($0, "("); c = match($0, /\) [A-Za-z] /); if (!o || !c) next
        name = substr($0, o + 1, c - o - 1); gsub(/ /, "_", name)
        n = split(substr($0, c + 2), f, " "); print $1, f[3], f[12] + f[13], name }'
}
foreign_cpu() {
    local a
    a=$(proc_cpu)
    sleep 1
    proc_cpu | awk -v hz="$(getconf CLK_TCK)" -v me="$MY_PGRP" -v before="$a" '
        BEGIN { n = split(before, l, "\n"); for (i = 1; i <= n; i++) { split(l[i], f, " "); t[f[1]] = f[3] } }
        $2 != me && ($1 in t) { d = ($3 - t[$1]) / hz; if (d > 0) { sum += d; by[$4] += d } }
        END {
            top = ""
            for (k in by) if (by[k] >= 0.05) top = top sprintf("%s%s %.2f", (top == "" ? "" : ", "), k, by[k])
            printf "%.2f%s", sum, (top == "" ? "" : " (" top ")") }'
}
blob_files() { find "$DATA/blobs" -type f ! -newer "$WORK/config.toml" | wc -l; }

# ---------------------------------------------------------------------------------------------
# 0. binaries
# ---------------------------------------------------------------------------------------------
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/berth-target}
build() { # LABEL ARGS...: cargo build --release ARGS, log to $WORK/build-LABEL.log
    local label=$1
    shift
    log "building $label: cargo build --release $* (CARGO_TARGET_DIR=$CARGO_TARGET_DIR) ..."
    (cd "$ROOT" && timeout "${BENCH_BUILD_TIMEOUT:-3600}" cargo build --release "$@") >"$WORK/build-$label.log" 2>&1 ||
        { tail -30 "$WORK/build-$label.log" >&2; die "building $label failed"; }
}
if [[ -n ${BERTH_BIN:-} ]]; then
    BERTH=$BERTH_BIN
else
    # The same command as bench/run.sh, so the two share one build.
    build berth -p berth
    BERTH=$CARGO_TARGET_DIR/release/berth
fi
[[ -x $BERTH ]] || die "berth binary $BERTH is not executable"
if [[ -n ${GC_SEED_BIN:-} ]]; then
    SEED=$GC_SEED_BIN
else
    # A separate invocation: building the example with the binary in one command would unify
    # dev-dependency features into the binary's dependencies and rebuild it next time.
    build gc_seed -p berth --example gc_seed
    SEED=$CARGO_TARGET_DIR/release/examples/gc_seed
fi
[[ -x $SEED ]] || die "seeder $SEED is not executable"
# copies, so that a rebuild during the run cannot swap them (server and `berth gc` stay one build)
mkdir -p "$WORK/bin"
cp "$BERTH" "$WORK/bin/berth" && cp "$SEED" "$WORK/bin/gc_seed" || die "copying the binaries failed"
BERTH_SRC=$BERTH
BERTH=$WORK/bin/berth
SEED=$WORK/bin/gc_seed
log "berth: $BERTH_SRC; seeder: $SEED"

# ---------------------------------------------------------------------------------------------
# 1. seed
# ---------------------------------------------------------------------------------------------
DATA=$WORK/data
FOREIGN_SEED=$(foreign_cpu)
log "seeding $N_BLOBS blobs and $N_MANIFESTS manifests into $DATA ..."
t0=$(now)
"$SEED" "$DATA" "$N_BLOBS" "$N_MANIFESTS" "$WORK/list.txt" >"$WORK/seed.out" 2>"$WORK/seed.err" ||
    { cat "$WORK/seed.out" "$WORK/seed.err" >&2; die "seeding failed"; }
SEED_WALL=$(secs_between "$t0" "$(now)")
cat "$WORK/seed.out" >&2
SEED_TOOK=$(sed -n 's/^took: //p' "$WORK/seed.out")
expect() { sed -n "s/^expect: .*\<$1=\([0-9]*\).*/\1/p" "$WORK/seed.out"; }
EXP_MANIFESTS=$(expect manifests)
EXP_LINKS=$(expect links)
EXP_BLOBS=$(expect blobs)
EXP_BYTES=$(expect bytes)
[[ -n $EXP_BLOBS && -n $EXP_BYTES ]] || die "seeder printed no 'expect:' line"
SEED_BYTES=$(sed -n 's/^seeded .* blobs (\([0-9]*\) bytes).*/\1/p' "$WORK/seed.out")

# ---------------------------------------------------------------------------------------------
# 2. serve
# ---------------------------------------------------------------------------------------------
cat >"$WORK/config.toml" <<EOF
[server]
listen = "127.0.0.1:0"
log = "warn"

[storage]
data_dir = "$DATA"

[gc]
schedule = "off"

[retention]
schedule = "off"

[cache]
schedule = "off"
EOF
"$BERTH" config check "$WORK/config.toml" >/dev/null || die "config check failed"
env -u RUST_LOG "$BERTH" serve --config "$WORK/config.toml" >"$WORK/serve.out" 2>"$WORK/serve.err" &
PID=$!
OUR_PIDS+=("$PID")
BASE=
for ((i = 0; i < 600; i++)); do
    addr=$(sed -n 's#^berth listening on http://\([^ ]*\).*#\1#p' "$WORK/serve.out" 2>/dev/null | head -1)
    [[ -n $addr ]] && { BASE=http://$addr; break; }
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
[[ -n $BASE ]] || { cat "$WORK/serve.out" "$WORK/serve.err" >&2; die "berth did not start"; }
[[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/v2/") == 200 ]] || die "GET $BASE/v2/ is not 200"
log "berth serving $BASE (pid $PID)"
HWM_START=$(vm_kib "$PID" VmHWM)

# ---------------------------------------------------------------------------------------------
# load: wrk cycling through manifest GETs by tag and blob GETs of tagged images (all of which
# must stay 200 through GC). berth records a manifest's pull time (a SQLite write, off the
# request path) at most once a minute per manifest; in steady state some pulls are always
# such "fresh" pulls. So 1 request in FRESH_EVERY is a tagged manifest not pulled before in
# this run, from a pool of its own per phase.
# ---------------------------------------------------------------------------------------------
# list.txt: kind repo tag manifest-digest own-layer shared-layer
awk -v n="$N_PATHS" '$1 == "tagged" && k < n { k++; print "/v2/" $2 "/manifests/" $3; print "/v2/" $2 "/blobs/" $5 }' \
    "$WORK/list.txt" >"$WORK/paths.txt"
# and the shared layers (referenced by an untagged manifest and by its tagged partner)
awk -v n="$N_PATHS" '$1 == "untagged" && k < n / 4 { k++; print "/v2/" $2 "/blobs/" $6 }' "$WORK/list.txt" >>"$WORK/paths.txt"
N_LOAD_PATHS=$(wc -l <"$WORK/paths.txt")
# the other tagged manifests, split into 4 fresh pools: baseline, dry, real, after
PHASES=(baseline dry real after)
N_TAGGED=$(awk '$1 == "tagged"' "$WORK/list.txt" | wc -l)
POOL=$(((N_TAGGED - N_PATHS) / 4))
((POOL > 0)) || die "BENCH_GC_PATHS=$N_PATHS leaves no tagged manifests for fresh pulls ($N_TAGGED tagged)"
for ((k = 0; k < 4; k++)); do
    awk -v from="$((N_PATHS + k * POOL))" -v n="$POOL" '$1 == "tagged" { t++; if (t > from && t <= from + n) print "/v2/" $2 "/manifests/" $3 }' \
        "$WORK/list.txt" >"$WORK/fresh-${PHASES[$k]}.txt"
done
cat >"$WORK/load.lua" <<EOF
local paths, fresh = {}, {}
local i, n, f = 0, 0, 0
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  for line in io.lines(args[2]) do fresh[#fresh + 1] = line end
  i = ((id or 1) * 7919) % #paths
  f = (id or 1) - 1 -- threads take disjoint stripes of the fresh pool
  wrk.headers["Accept"] = "$MT_MANIFEST"
end
request = function()
  n = n + 1
  if #fresh > 0 and $FRESH_EVERY > 0 and n % $FRESH_EVERY == 0 then
    local p = fresh[f % #fresh + 1]
    f = f + $WRK_THREADS
    return wrk.format("GET", p)
  end
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LOAD requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
load_line() { sed -n 's/^LOAD //p' "$1" | tail -1; }
field() { # LINE KEY -> value
    local kv
    for kv in $1; do [[ ${kv%%=*} == "$2" ]] && { printf '%s' "${kv#*=}"; return; }; done
    printf 'ERR'
}
ms() { [[ $1 == ERR ]] && { printf 'ERR'; return; }; awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
errors_of() { # LOAD line -> total errors
    [[ -z $1 ]] && { printf 'ERR'; return; }
    awk -v a="$(field "$1" err_connect)" -v b="$(field "$1" err_read)" -v c="$(field "$1" err_write)" \
        -v d="$(field "$1" err_status)" -v e="$(field "$1" err_timeout)" 'BEGIN { print a + b + c + d + e }'
}
# wrk.sh DURATION FRESHFILE: a script, so that `timeout` can run it and `kill` reaches wrk
# itself (exec)
printf '#!/bin/sh\nexec wrk -t"%s" -c"%s" -d"$1" --timeout 30s -s "%s" "%s" -- "%s" "$2"\n' \
    "$WRK_THREADS" "$WRK_CONNS" "$WORK/load.lua" "$BASE" "$WORK/paths.txt" >"$WORK/wrk.sh"
chmod +x "$WORK/wrk.sh"
timed_load() { # NAME: a fixed-duration load run -> $WORK/load-NAME.out
    local secs=${WRK_DURATION%s}
    timeout $((secs + 60)) "$WORK/wrk.sh" "$WRK_DURATION" "$WORK/fresh-$1.txt" >"$WORK/load-$1.out" 2>&1 ||
        err "wrk ($1) failed: $(tail -3 "$WORK/load-$1.out")"
}
# warnings and errors the server logged (e.g. "could not record a pull" when a write waits
# out busy_timeout behind GC)
warnings() { grep -c 'WARN\|ERROR' "$WORK/serve.err" 2>/dev/null || true; }

# During a GC: wrk until stopped (SIGINT makes wrk stop and print its summary), small pushes
# (POST ?digest=, one every ~100 ms: each is a SQLite write, so they show how long GC holds the
# write lock), and a sampler of the server's RSS and the WAL size.
probe_pushes() { # NAME STOPFILE
    local n=0 dg res
    : >"$WORK/push-$1.txt"
    while [[ ! -e $2 ]] && ((n < 36000)); do
        n=$((n + 1))
        printf 'berth gc bench probe %s %s %s\n' "$1" "$n" "$(now)" >"$WORK/probe-$1.bin"
        dg=$(sha256sum "$WORK/probe-$1.bin")
        res=$(curl -sS --max-time 120 -o /dev/null -w '%{http_code} %{time_total}' \
            -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/probe-$1.bin" \
            "$BASE/v2/gcbench/probe/blobs/uploads/?digest=sha256:${dg%% *}" 2>/dev/null) || res="000 0"
        printf '%s %s\n' "$(now)" "$res" >>"$WORK/push-$1.txt"
        sleep 0.1
    done
}
sampler() { # NAME STOPFILE
    local n=0
    : >"$WORK/sample-$1.txt"
    while [[ ! -e $2 ]] && ((n < 72000)); do
        n=$((n + 1))
        printf '%s %s %s\n' "$(now)" "$(vm_kib "$PID" VmRSS)" "$(file_size "$DATA/berth.db-wal")" >>"$WORK/sample-$1.txt"
        sleep 0.05
    done
}
GC_WALL=
gc_under_load() { # NAME [berth gc flags...]
    local name=$1 stop=$WORK/stop-$1 wrk_pid probe_pid sampler_pid t0 t1 i rc=0
    shift
    rm -f "$stop"
    # wrk's own -d bounds it; SIGINT makes it stop early and print its summary
    "$WORK/wrk.sh" "${LOAD_MAX}s" "$WORK/fresh-$name.txt" >"$WORK/load-$name.out" 2>&1 &
    wrk_pid=$!
    OUR_PIDS+=("$wrk_pid")
    probe_pushes "$name" "$stop" &
    probe_pid=$!
    OUR_PIDS+=("$probe_pid")
    sampler "$name" "$stop" &
    sampler_pid=$!
    OUR_PIDS+=("$sampler_pid")
    sleep 1
    log "berth gc $* (under load) ..."
    t0=$(now)
    timeout "$GC_TIMEOUT" "$BERTH" gc --server "$BASE" "$@" >"$WORK/gc-$name.out" 2>"$WORK/gc-$name.err" || rc=$?
    t1=$(now)
    GC_WALL=$(secs_between "$t0" "$t1")
    printf '%s %s\n' "$t0" "$t1" >"$WORK/gc-$name.window"
    sleep 0.5
    touch "$stop"
    kill -INT "$wrk_pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$wrk_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
    wait "$probe_pid" "$sampler_pid" 2>/dev/null || true
    ((rc == 0)) || { err "berth gc $* exited $rc: $(cat "$WORK/gc-$name.err")"; return 1; }
    log "$(tail -1 "$WORK/gc-$name.out") [${GC_WALL}s]"
}
push_stats() { # NAME -> "count p50_ms max_ms failures" over pushes that overlapped the GC window
    local t0 t1
    read -r t0 t1 <"$WORK/gc-$1.window"
    awk -v t0="$t0" -v t1="$t1" '{ end = $1; took = $3; start = end - took }
        start <= t1 && end >= t0 { printf "%.1f %s\n", took * 1000, ($2 == 201 ? 0 : 1) }' "$WORK/push-$1.txt" |
        sort -g | awk '{ v[NR] = $1; bad += $2 }
            END { if (NR == 0) print "0 - - 0"; else printf "%d %s %s %d\n", NR, v[int((NR + 1) / 2)], v[NR], bad }'
}
sample_max() { # NAME COLUMN -> max over the samples
    awk -v c="$2" '$c > m { m = $c } END { print m + 0 }' "$WORK/sample-$1.txt"
}
# the `berth gc` summary line: "...: M manifests, L repository links, B blobs; N bytes ..."
gc_count() { # NAME WHAT(manifests|links|blobs|bytes)
    tail -1 "$WORK/gc-$1.out" | awk -v w="$2" '{
        for (i = 2; i <= NF; i++) {
            t = $i; gsub(/[,;]/, "", t)
            if ((w == "manifests" && t == "manifests") || (w == "links" && t == "repository") ||
                (w == "blobs" && t == "blobs") || (w == "bytes" && t == "bytes")) { print $(i - 1); exit }
        } }'
}

# ---------------------------------------------------------------------------------------------
# 3. measure
# ---------------------------------------------------------------------------------------------
FILES_BEFORE=$(blob_files)
DB_BEFORE=$(file_size "$DATA/berth.db")
log "warm-up 2s, then baseline load $WRK_DURATION ($N_LOAD_PATHS paths, wrk -t$WRK_THREADS -c$WRK_CONNS) ..."
timeout 60 "$WORK/wrk.sh" 2s /dev/null >/dev/null 2>&1 || true
FOREIGN_BASE=$(foreign_cpu)
W0=$(warnings)
timed_load baseline
HWM_BASELINE=$(vm_kib "$PID" VmHWM)
W_BASE=$(($(warnings) - W0))

FAILED=0
fail() { err "CHECK FAILED: $*"; FAILED=1; }
W0=$(warnings)
gc_under_load dry --dry-run || fail "berth gc --dry-run failed"
W_DRY=$(($(warnings) - W0))
DRY_WALL=$GC_WALL
HWM_DRY=$(vm_kib "$PID" VmHWM)
FILES_AFTER_DRY=$(blob_files)
W0=$(warnings)
gc_under_load real || fail "berth gc failed"
W_REAL=$(($(warnings) - W0))
REAL_WALL=$GC_WALL
HWM_GC=$(vm_kib "$PID" VmHWM)
FOREIGN_GC=$(foreign_cpu)
FILES_AFTER=$(blob_files)
DB_AFTER=$(file_size "$DATA/berth.db")

log "after-GC load $WRK_DURATION ..."
W0=$(warnings)
timed_load after
HWM_END=$(vm_kib "$PID" VmHWM)
W_AFTER=$(($(warnings) - W0))

# ---------------------------------------------------------------------------------------------
# 4. checks
# ---------------------------------------------------------------------------------------------
FOREIGN_END=$(foreign_cpu)
log "checking ..."
status() { curl -s -o /dev/null --max-time 30 -w '%{http_code}' -H "Accept: $MT_MANIFEST" "$BASE$1" || echo 000; }
# every k-th line of a kind, SAMPLE of them
sample_lines() { awk -v kind="$1" -v n="$SAMPLE" -v total="$N_MANIFESTS" '
    BEGIN { step = int(total / 2 / n); if (step < 1) step = 1 }
    $1 == kind { k++; if ((k - 1) % step == 0 && c < n) { c++; print } }' "$WORK/list.txt"; }
check_paths() { # WANT LABEL: paths on stdin -> counts of ok / total
    local want=$1 label=$2 p code ok=0 total=0
    while read -r p; do
        total=$((total + 1))
        code=$(status "$p")
        if [[ $code == "$want" ]]; then ok=$((ok + 1)); else ((total - ok > 5)) || err "$label: GET $p -> $code (want $want)"; fi
    done
    printf '%d/%d' "$ok" "$total"
    ((ok == total && total > 0))
}
declare -A CHECK=()
run_check() { # KEY WANT LABEL (paths on stdin)
    local out rc=0
    out=$(check_paths "$2" "$3") || rc=1
    CHECK[$1]="$out"
    ((rc == 0)) || fail "$3: $out answered $2"
}
run_check tagged_tag 200 "tagged manifests by tag" < <(sample_lines tagged | awk '{ print "/v2/" $2 "/manifests/" $3 }')
run_check tagged_digest 200 "tagged manifests by digest" < <(sample_lines tagged | awk '{ print "/v2/" $2 "/manifests/" $4 }')
run_check tagged_blob 200 "layers of tagged manifests" < <(sample_lines tagged | awk '{ print "/v2/" $2 "/blobs/" $5 }')
run_check shared_blob 200 "layers shared by untagged and tagged manifests" < <(sample_lines untagged | awk '{ print "/v2/" $2 "/blobs/" $6 }')
run_check untagged_gone 404 "untagged manifests (collected)" < <(sample_lines untagged | awk '{ print "/v2/" $2 "/manifests/" $4 }')
run_check untagged_blob_gone 404 "own layers of untagged manifests (collected)" < <(sample_lines untagged | awk '{ print "/v2/" $2 "/blobs/" $5 }')

for w in manifests links blobs bytes; do
    [[ $(gc_count dry "$w") == "$(gc_count real "$w")" ]] || fail "dry run and real run differ in $w: $(gc_count dry "$w") vs $(gc_count real "$w")"
done
[[ $(gc_count real manifests) == "$EXP_MANIFESTS" ]] || fail "collected $(gc_count real manifests) manifests, the seed makes $EXP_MANIFESTS garbage"
[[ $(gc_count real links) == "$EXP_LINKS" ]] || fail "collected $(gc_count real links) links, the seed makes $EXP_LINKS garbage"
[[ $(gc_count real blobs) == "$EXP_BLOBS" ]] || fail "collected $(gc_count real blobs) blobs, the seed makes $EXP_BLOBS garbage"
[[ $(gc_count real bytes) == "$EXP_BYTES" ]] || fail "freed $(gc_count real bytes) bytes, the seed makes $EXP_BYTES garbage"
[[ $FILES_AFTER_DRY == "$FILES_BEFORE" ]] || fail "the dry run changed the number of blob files: $FILES_BEFORE -> $FILES_AFTER_DRY"
PROBE_FILES=$(find "$DATA/blobs" -type f -newer "$WORK/config.toml" | wc -l)
DROPPED=$((FILES_BEFORE - FILES_AFTER))
[[ $DROPPED == "$(gc_count real blobs)" ]] ||
    fail "seeded blob files dropped by $DROPPED ($FILES_BEFORE before, $FILES_AFTER after); gc reported $(gc_count real blobs)"

# ---------------------------------------------------------------------------------------------
# 5. report
# ---------------------------------------------------------------------------------------------
L_BASE=$(load_line "$WORK/load-baseline.out")
L_DRY=$(load_line "$WORK/load-dry.out")
L_REAL=$(load_line "$WORK/load-real.out")
L_AFTER=$(load_line "$WORK/load-after.out")
warn_summary() { # WARN/ERROR lines of the server grouped by message, with the longest elapsed=
    { grep 'WARN\|ERROR' "$WORK/serve.err" || true; } | awk '
        { msg = $0; sub(/.*(WARN|ERROR) +/, "", msg)
          if (match(msg, /summary="[^"]*"/)) key = "slow statement " substr(msg, RSTART + 8, RLENGTH - 8)
          else if (match(msg, / acquired_after_secs=/)) key = substr(msg, 1, RSTART - 1) " (over 2 s)"
          else key = substr(msg, 1, 100)
          el = 0
          if (match(msg, /(elapsed|acquired_after)_secs=[0-9.]+/)) {
              v = substr(msg, RSTART, RLENGTH); sub(/^[a-z_]+=/, "", v); el = v + 0
          }
          n[key]++; if (el > mx[key]) mx[key] = el }
        END { for (k in n) printf "    %5d x %s%s\n", n[k], k, (mx[k] > 0 ? sprintf(" (longest %.2f s)", mx[k]) : "") }' |
        sort -rn | head -10
}
row() { # LABEL WALL LOADLINE HWM_KIB WARNINGS PUSHSTATS
    local l=$3
    printf '%-22s %7s %8s %7s %7s %8s %6s %6s %6s %s\n' "$1" "$2" \
        "$(field "$l" rps)" "$(ms "$(field "$l" p50_us)")" "$(ms "$(field "$l" p99_us)")" "$(ms "$(field "$l" max_us)")" \
        "$(errors_of "$l")" "$(kib_to_mib "$4")" "$5" "$6"
}
push_cell() { # NAME
    local n p50 mx bad
    read -r n p50 mx bad <<<"$(push_stats "$1")"
    printf '%s pushes, p50 %s ms, max %s ms, %s failed' "$n" "$p50" "$mx" "$bad"
}
{
    echo
    echo "berth gc benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo +dirty)"
    echo "host: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "berth: $BERTH_SRC"
    echo "other processes on the host (cores busy, 1 s samples; nonzero means noisy numbers):"
    echo "      before seeding $FOREIGN_SEED; before baseline $FOREIGN_BASE; after gc $FOREIGN_GC; after the last load $FOREIGN_END"
    echo "seed: $N_BLOBS blobs ($(awk -v b="${SEED_BYTES:-0}" 'BEGIN { printf "%.0f MiB", b / 1048576 }')) in 8 repositories, $N_MANIFESTS manifests (half tagged), all 2 days old"
    echo "      seeding: $SEED_TOOK; wall ${SEED_WALL}s"
    echo "load: wrk -t$WRK_THREADS -c$WRK_CONNS over $N_LOAD_PATHS paths (manifest GET by tag, blob GET; all must stay 200);"
    if ((FRESH_EVERY > 0)); then
        echo "      1 request in $FRESH_EVERY is a tagged manifest not pulled before (berth records its pull: a SQLite write);"
    else
        echo "      no fresh pulls (BENCH_GC_FRESH_EVERY=0): every manifest pulled was pulled in the last minute;"
    fi
    echo "      during GC from 1 s before to 0.5 s after \`berth gc\`, plus one small push (POST ?digest=) every ~100 ms;"
    echo "      errors = wrk errors (non-2xx, socket, timeout); warns = WARN/ERROR lines the server logged in the phase"
    echo
    printf '%-22s %7s %8s %7s %7s %8s %6s %6s %6s %s\n' phase "wall s" "req/s" "p50 ms" "p99 ms" "max ms" errors "HWM MiB" "warns" "small pushes during gc"
    printf '%-22s %7s %8s %7s %7s %8s %6s %6s %6s %s\n' ---------------------- ------- -------- ------- ------- -------- ------ ------ ------ ----------------------
    row "baseline ($WRK_DURATION)" - "$L_BASE" "$HWM_BASELINE" "$W_BASE" ""
    row "berth gc --dry-run" "$DRY_WALL" "$L_DRY" "$HWM_DRY" "$W_DRY" "$(push_cell dry)"
    row "berth gc" "$REAL_WALL" "$L_REAL" "$HWM_GC" "$W_REAL" "$(push_cell real)"
    row "after gc ($WRK_DURATION)" - "$L_AFTER" "$HWM_END" "$W_AFTER" ""
    echo
    echo "gc --dry-run: $(tail -1 "$WORK/gc-dry.out")"
    echo "gc:           $(tail -1 "$WORK/gc-real.out")"
    echo "expected:     $EXP_MANIFESTS manifests, $EXP_LINKS links, $EXP_BLOBS blobs, $EXP_BYTES bytes"
    echo "RSS: VmHWM at start $(kib_to_mib "$HWM_START") MiB, after baseline $(kib_to_mib "$HWM_BASELINE"), after dry run $(kib_to_mib "$HWM_DRY"), after gc $(kib_to_mib "$HWM_GC"), at end $(kib_to_mib "$HWM_END");"
    echo "     sampled VmRSS max during dry run $(kib_to_mib "$(sample_max dry 2)") MiB, during gc $(kib_to_mib "$(sample_max real 2)") MiB"
    echo "WAL: max during dry run $(awk -v b="$(sample_max dry 3)" 'BEGIN { printf "%.1f", b / 1048576 }') MiB, during gc $(awk -v b="$(sample_max real 3)" 'BEGIN { printf "%.1f", b / 1048576 }') MiB;" \
        "berth.db $(awk -v b="$DB_BEFORE" 'BEGIN { printf "%.1f", b / 1048576 }') MiB before, $(awk -v b="$DB_AFTER" 'BEGIN { printf "%.1f", b / 1048576 }') MiB after"
    echo "seeded blob files: $FILES_BEFORE before, $FILES_AFTER after: dropped by $DROPPED (and $PROBE_FILES probe pushes stored)"
    echo
    echo "checks (sample of $SAMPLE per kind):"
    echo "  tagged manifests GET by tag 200           ${CHECK[tagged_tag]:-ERR}"
    echo "  tagged manifests GET by digest 200        ${CHECK[tagged_digest]:-ERR}"
    echo "  layers of tagged manifests 200            ${CHECK[tagged_blob]:-ERR}"
    echo "  layers shared with untagged ones 200      ${CHECK[shared_blob]:-ERR}"
    echo "  untagged manifests 404                    ${CHECK[untagged_gone]:-ERR}"
    echo "  own layers of untagged manifests 404      ${CHECK[untagged_blob_gone]:-ERR}"
    echo "  counts: dry run = real run = seed's garbage; blob files dropped by the count: $([[ $FAILED == 0 ]] && echo ok || echo FAILED)"
    echo "result: $([[ $FAILED == 0 ]] && echo PASS || echo FAIL)"
    echo
    echo "raw:"
    echo "  seed: $(tr '\n' ' ' <"$WORK/seed.out")"
    echo "  load.baseline: $L_BASE"
    echo "  load.dry: $L_DRY"
    echo "  load.real: $L_REAL"
    echo "  load.after: $L_AFTER"
    echo "  push.dry: $(push_stats dry) (count p50_ms max_ms failed)"
    echo "  push.real: $(push_stats real)"
    echo "  gc.dry.window: $(cat "$WORK/gc-dry.window")"
    echo "  gc.real.window: $(cat "$WORK/gc-real.window")"
    echo "  vmhwm_kib: start=$HWM_START baseline=$HWM_BASELINE dry=$HWM_DRY gc=$HWM_GC end=$HWM_END"
    echo "  server warnings, by message (sqlx logs statements over 1 s and pool waits over 2 s):"
    warn_summary
} | tee "$RESULTS"
log "results written to $RESULTS"
exit "$FAILED"
