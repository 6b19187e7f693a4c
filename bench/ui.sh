#!/usr/bin/env bash
# berth web UI benchmark: seed REPOS repositories x TAGS tags straight through the storage
# layer (crates/berth/examples/ui_seed.rs), serve them with the release binary on
# loopback, and time the repository list (/ui/repos) in each sort order, a search and a
# late page, plus the overview and one repository page. See bench/README.md.
#
# Exits 0 when every median is under the target, 1 when one is not, 2 when setup fails.
#
# Environment (all optional):
#   BERTH_BIN          berth binary; unset: cargo build --release -p berth
#   UI_SEED_BIN        seeder; unset: cargo build --release -p berth --example ui_seed
#                      (both in CARGO_TARGET_DIR, default /var/cache/berth-target)
#   BENCH_UI_REPOS     repositories to seed                      (default 1000)
#   BENCH_UI_TAGS      tags per repository                       (default 20)
#   BENCH_UI_RUNS      timed requests per page                   (default 30)
#   BENCH_UI_TARGET_MS the bound each median must stay under     (default 100)
#   BENCH_TMPDIR       where the temp work dir goes              (default /tmp)
#   BENCH_UI_RESULTS   results file           (default bench/ui-results-latest.txt)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPOS=${BENCH_UI_REPOS:-1000}
TAGS=${BENCH_UI_TAGS:-20}
RUNS=${BENCH_UI_RUNS:-30}
TARGET_MS=${BENCH_UI_TARGET_MS:-100}
RESULTS=${BENCH_UI_RESULTS:-$HERE/ui-results-latest.txt}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/berth-target}

die() { echo "bench/ui.sh: $*" >&2; exit 2; }
command -v curl >/dev/null || die "curl is needed"

if [ -z "${BERTH_BIN:-}" ] || [ -z "${UI_SEED_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p berth --bin berth --example ui_seed) || die "build failed"
fi
BERTH_BIN=${BERTH_BIN:-$CARGO_TARGET_DIR/release/berth}
UI_SEED_BIN=${UI_SEED_BIN:-$CARGO_TARGET_DIR/release/examples/ui_seed}

WORK=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/berth-ui-bench.XXXXXX")
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "seeding $REPOS repositories x $TAGS tags ..." >&2
"$UI_SEED_BIN" "$WORK/data" "$REPOS" "$TAGS" >"$WORK/seed.log" || die "seeding failed: $(cat "$WORK/seed.log")"
cat >"$WORK/berth.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "$WORK/data"
[gc]
schedule = "off"
TOML
RUST_LOG=warn "$BERTH_BIN" serve --config "$WORK/berth.toml" >"$WORK/serve.log" 2>&1 &
PID=$!
URL=""
for _ in $(seq 1 100); do
  URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/serve.log" | head -1 || true)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || die "berth did not start: $(cat "$WORK/serve.log")"

# Median and 95th percentile (ms) of RUNS timed GETs of a path, after one warm-up.
measure() {
  local path=$1 status
  status=$(curl -s -o /dev/null -w '%{http_code}' "$URL$path")
  [ "$status" = 200 ] || die "GET $path answered $status"
  for _ in $(seq 1 "$RUNS"); do
    curl -s -o /dev/null -w '%{time_total}\n' "$URL$path"
  done | sort -n | awk -v n="$RUNS" '{ t[NR] = $1 * 1000 }
    END { printf "%.1f %.1f\n", t[int((n + 1) / 2)], t[int(n * 0.95 + 0.999)] }'
}

# The list must show every repository (a quick check that the numbers are for real pages).
total=$(curl -s "$URL/ui/repos" | grep -o 'data-total="[0-9]*"' | grep -o '[0-9]*')
[ "$total" = "$REPOS" ] || die "the list shows $total repositories, not $REPOS"

fail=0
{
  echo "berth web UI benchmark: $REPOS repositories x $TAGS tags, $RUNS requests per page"
  echo "berth $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "$(cat "$WORK/seed.log")"
  printf '%-40s %10s %10s\n' "page" "median ms" "p95 ms"
} | tee "$RESULTS"
for path in "/ui/repos" "/ui/repos?sort=size" "/ui/repos?sort=pushed" "/ui/repos?sort=pulled" \
            "/ui/repos?q=team3/" "/ui/repos?sort=name&page=20" "/ui/" \
            "/ui/repos/seed/team7/app0007"; do
  read -r median p95 < <(measure "$path")
  mark=""
  case "$path" in
    /ui/repos*)
      if awk -v m="$median" -v t="$TARGET_MS" 'BEGIN { exit !(m >= t) }'; then mark="  OVER ${TARGET_MS} ms"; fail=1; fi ;;
  esac
  printf '%-40s %10s %10s%s\n' "$path" "$median" "$p95" "$mark" | tee -a "$RESULTS"
done
exit $fail
