#!/usr/bin/env bash
# berth on its two storage backends, same machine, same binary (release):
#   fs+SQLite   blobs as files, metadata in SQLite (the default);
#   S3+PG       blobs in an S3 bucket served by s3s-fs (crates/berth-testkit's s3fs-server,
#               a directory on the same disk behind the S3 API on loopback), metadata in a
#               private PostgreSQL 15 cluster started by this script (initdb as the
#               unprivileged user berth-test, loopback port, fsync on).
# Request bodies go unsigned (storage.s3.sign_payload = false), as they do by default over
# HTTPS; plain HTTP signs by default, which hashes every pushed byte twice more.
# Measures a 1 GiB monolithic push (POST + PUT ?digest=), a whole-blob pull (median of
# runs; on S3 once served by berth and once through storage.s3.redirect, where curl
# follows the 307 to the presigned URL), and manifest GETs per second (wrk, as
# bench/run.sh). Prints ratios (S3+PG / fs+SQLite) and writes the results file.
#
# Environment (optional): BERTH_BIN, S3FS_BIN (default: built with cargo --release in
# CARGO_TARGET_DIR), BENCH_BLOB_MIB (1024), BENCH_PULL_RUNS (3), BENCH_WRK_DURATION (10s),
# BENCH_WRK_CONNS (64), BENCH_WRK_THREADS (2), BENCH_TMPDIR (/tmp),
# BENCH_RESULTS (bench/backends-results-latest.txt).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BLOB_MIB=${BENCH_BLOB_MIB:-1024}
PULL_RUNS=${BENCH_PULL_RUNS:-3}
WRK_DURATION=${BENCH_WRK_DURATION:-10s}
WRK_CONNS=${BENCH_WRK_CONNS:-64}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
RESULTS=${BENCH_RESULTS:-$HERE/backends-results-latest.txt}
PGBIN=/usr/lib/postgresql/15/bin
PGUSER_OS=berth-test
REPO=bench/app
MT=application/vnd.oci.image.manifest.v1+json
ACCESS_KEY=berth-test-access
SECRET_KEY=berth-test-secret-key

log() { printf '[backends %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
for tool in curl wrk python3 sha256sum runuser; do command -v $tool >/dev/null || die "missing $tool"; done
[ -x $PGBIN/initdb ] || die "PostgreSQL 15 is missing (apt-get install postgresql)"
id $PGUSER_OS >/dev/null 2>&1 || useradd --system --no-create-home $PGUSER_OS

if [ -z "${BERTH_BIN:-}" ] || [ -z "${S3FS_BIN:-}" ]; then
    log "building berth and s3fs-server (release)"
    (cd "$ROOT" && cargo build --release -q -p berth -p berth-testkit --bin berth --bin s3fs-server)
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    BERTH_BIN=${BERTH_BIN:-$target/release/berth}
    S3FS_BIN=${S3FS_BIN:-$target/release/s3fs-server}
fi

WORK=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/berth-backends.XXXXXX")
chmod 755 "$WORK"
declare -a PIDS=()
PGDATA=$WORK/pg/data
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    [ -f "$PGDATA/postmaster.pid" ] && runuser -u $PGUSER_OS -- $PGBIN/pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mibs() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / 1048576 / t }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }

# wait_line FILE PREFIX: the rest of the first line of FILE starting with PREFIX (30 s)
wait_line() {
    local line
    for _ in $(seq 300); do
        line=$(grep -m1 "^$2" "$1" 2>/dev/null || true)
        [ -n "$line" ] && { printf '%s' "${line#"$2"}"; return 0; }
        sleep 0.1
    done
    die "no '$2' in $1: $(tail -5 "$1")"
}

# start_berth NAME STORAGE_TOML: starts berth, sets STARTED to its base URL. Not run in
# $(...): PIDS must grow in this shell, or cleanup leaves the server running.
start_berth() {
    local dir=$WORK/$1
    mkdir -p "$dir"
    printf '[server]\nlisten = "127.0.0.1:0"\nlog = "warn"\n[storage]\ndata_dir = "%s"\n%s\n' "$dir/data" "$2" >"$dir/berth.toml"
    "$BERTH_BIN" serve --config "$dir/berth.toml" >"$dir/out" 2>"$dir/err" &
    PIDS+=($!)
    STARTED=$(wait_line "$dir/out" "berth listening on ")
}

log "work dir $WORK"
BLOB=$WORK/blob.bin
head -c $((BLOB_MIB * 1048576)) /dev/urandom >"$BLOB"
DIGEST=sha256:$(sha256sum "$BLOB" | cut -d' ' -f1)
SIZE=$(stat -c %s "$BLOB")

# S3: s3fs-server on a directory of this disk.
"$S3FS_BIN" "$WORK/s3" berth-bench >"$WORK/s3.out" 2>&1 &
PIDS+=($!)
S3=$(wait_line "$WORK/s3.out" "s3fs-server listening on ")
printf '%s\n' $ACCESS_KEY >"$WORK/ak"; printf '%s\n' $SECRET_KEY >"$WORK/sk"
# PostgreSQL: a private cluster.
mkdir -p "$WORK/pg"; chown $PGUSER_OS "$WORK/pg"
runuser -u $PGUSER_OS -- $PGBIN/initdb -D "$PGDATA" -U berth --auth=trust -E UTF8 --locale=C >/dev/null
PGPORT=$(free_port)
runuser -u $PGUSER_OS -- $PGBIN/pg_ctl -D "$PGDATA" -l "$WORK/pg/log" -w \
    -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
runuser -u $PGUSER_OS -- $PGBIN/psql -h 127.0.0.1 -p "$PGPORT" -U berth -d postgres -qc "CREATE DATABASE bench" >/dev/null

S3_TOML="blobs = \"s3\"
metadata = \"postgres://berth@127.0.0.1:$PGPORT/bench\"
[storage.s3]
endpoint = \"$S3\"
bucket = \"berth-bench\"
prefix = \"reg\"
allow_http = true
sign_payload = false
access_key_id_file = \"$WORK/ak\"
secret_access_key_file = \"$WORK/sk\""

start_berth fs 'blobs = "fs"'
FS=$STARTED
start_berth s3pg "$S3_TOML"
S3PG=$STARTED
# A second replica on the same bucket and database, with presigned redirects.
start_berth s3pg-redirect "$S3_TOML
redirect = true
presign_ttl = \"10m\""
S3PG_REDIR=$STARTED
log "fs+SQLite $FS, S3+PG $S3PG, S3+PG with redirects $S3PG_REDIR, s3s-fs $S3"

push() { # BASE -> seconds
    local loc t0 t1 code
    loc=$(curl -sS -o /dev/null -D - -X POST -H 'Content-Length: 0' "$1/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
    [ -n "$loc" ] || die "POST upload on $1 gave no Location"
    case $loc in /*) loc=$1$loc ;; esac
    case $loc in *\?*) loc="$loc&" ;; *) loc="$loc?" ;; esac
    t0=$(date +%s.%N)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -T "$BLOB" -H 'Expect:' -H 'Content-Type: application/octet-stream' "${loc}digest=$DIGEST")
    t1=$(date +%s.%N)
    [ "$code" = 201 ] || die "PUT to $1 answered $code"
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}
pull() { # URL [curl flags] -> MiB/s, after checking the size
    local out
    out=$(curl -sS "${@:2}" -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$1")
    set -- $out
    [ "$1" = 200 ] && [ "$2" = "$SIZE" ] || die "pull answered $1 with $2 bytes"
    mibs "$2" "$3"
}
manifest() { # BASE: a small image whose manifest wrk reads
    local cfg='{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    local cd=sha256:$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)
    curl -sS -o /dev/null -X POST -H 'Content-Type: application/octet-stream' --data-binary "$cfg" "$1/v2/$REPO/blobs/uploads/?digest=$cd"
    local m="{\"schemaVersion\":2,\"mediaType\":\"$MT\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$cd\",\"size\":${#cfg}},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$DIGEST\",\"size\":$SIZE}]}"
    local code
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H "Content-Type: $MT" --data-binary "$m" "$1/v2/$REPO/manifests/latest")
    [ "$code" = 201 ] || die "manifest PUT on $1 answered $code"
}
rps() { # BASE -> requests/s
    local out
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" -H "Accept: $MT" "$1/v2/$REPO/manifests/latest")
    grep -q 'Non-2xx' <<<"$out" && die "wrk saw errors on $1: $out"
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}

declare -A R
for b in fs s3pg; do
    base=$FS; [ $b = s3pg ] && base=$S3PG
    log "$b: push $BLOB_MIB MiB"
    t=$(push "$base"); R[$b.push]=$(mibs "$SIZE" "$t")
    manifest "$base"
    runs=()
    for _ in $(seq "$PULL_RUNS"); do runs+=("$(pull "$base/v2/$REPO/blobs/$DIGEST")"); done
    R[$b.pull]=$(median "${runs[@]}")
    log "$b: manifest GETs ($WRK_DURATION)"
    R[$b.rps]=$(rps "$base")
done
# Through the redirect: berth answers 307, curl fetches the presigned URL from s3s-fs.
code=$(curl -sS -o /dev/null -w '%{http_code}' "$S3PG_REDIR/v2/$REPO/blobs/$DIGEST")
[ "$code" = 307 ] || die "the redirect replica answered $code, not 307"
runs=()
for _ in $(seq "$PULL_RUNS"); do runs+=("$(pull "$S3PG_REDIR/v2/$REPO/blobs/$DIGEST" -L)"); done
R[redir.pull]=$(median "${runs[@]}")

{
    echo "# bench/backends.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores; berth $("$BERTH_BIN" --version | cut -d' ' -f2)"
    echo "# S3 = s3s-fs 0.14 (crates/berth-testkit s3fs-server) on loopback, same disk, unsigned payloads; PG = PostgreSQL 15, private cluster, loopback"
    echo "# blob ${BLOB_MIB} MiB; pulls: median of $PULL_RUNS (verify_on_read on, the default); wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION"
    printf '%-34s %12s %12s %8s\n' measure fs+SQLite S3+PG ratio
    printf '%-34s %12s %12s %8s\n' "push monolithic (MiB/s)" "${R[fs.push]}" "${R[s3pg.push]}" "$(ratio "${R[s3pg.push]}" "${R[fs.push]}")"
    printf '%-34s %12s %12s %8s\n' "pull via berth (MiB/s)" "${R[fs.pull]}" "${R[s3pg.pull]}" "$(ratio "${R[s3pg.pull]}" "${R[fs.pull]}")"
    printf '%-34s %12s %12s %8s\n' "pull via presigned redirect (MiB/s)" "-" "${R[redir.pull]}" "$(ratio "${R[redir.pull]}" "${R[fs.pull]}")"
    printf '%-34s %12s %12s %8s\n' "manifest GET (req/s)" "${R[fs.rps]}" "${R[s3pg.rps]}" "$(ratio "${R[s3pg.rps]}" "${R[fs.rps]}")"
} | tee "$RESULTS"
