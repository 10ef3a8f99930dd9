#!/usr/bin/env bash
# Shards on one machine, in one command:
#
#   bench/shards.sh               # hyperfine, 5 runs of each after 1 warm-up
#   bench/shards.sh --runs 10
#
# Times bench/shards/pipeline.toml (200 rows through the diffusion model and the classifier) as
#   1-process   pipe run FILE
#   1-process-1-thread  the same, its models with one intra-op thread
#   1-shard     pipe run FILE --shard 0/1, then pipe merge
#   2-shards    pipe run FILE --shard 0/2 & pipe run FILE --shard 1/2, then pipe merge
#   2-shards-1-thread   the same, each shard's models with one intra-op thread
# every run with --no-cache (no row is read from the per-row cache) into a fresh output folder,
# and prints a Markdown table with the speed-up over 1-process, then the per-row cost of each
# stage from the 1-process run.json. Also written to bench/out/shards.md beside hyperfine's JSON.
#
# What is missing is made first: hyperfine (apt-get), target/release/pipe (cargo build --release).
#
# Options:
#   --runs N     hyperfine runs (default 5)
#   --pipe PATH  the pipe binary to time (default target/release/pipe)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5
PIPE=target/release/pipe
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --pipe) PIPE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "shards.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
log() { echo "shards.sh: $*" >&2; }

command -v hyperfine >/dev/null || { apt-get install -y hyperfine || (apt-get update && apt-get install -y hyperfine); }
[ -x "$PIPE" ] || { log "building target/release/pipe"; cargo build --release --bin pipe; }
PIPE=$(realpath "$PIPE")
FILE=bench/shards/pipeline.toml
OUT=bench/out/shards
mkdir -p bench/out
run="$PIPE run $FILE --quiet --no-cache"
# Each model stage's intra-op threads default to every core; two shards of one machine then
# ask for twice the cores there are. This variant gives each shard's models one thread.
run1="$run --set generate.threads=1 --set classify.threads=1"
hyperfine --warmup 1 --runs "$RUNS" --export-json bench/out/shards.json \
  --prepare "rm -rf $OUT" \
  -n 1-process "$run" \
  -n 1-process-1-thread "$run1" \
  -n 1-shard "$run --shard 0/1 && $PIPE merge $FILE --quiet" \
  -n 2-shards "$run --shard 0/2 & first=\$!; $run --shard 1/2 && wait \$first && $PIPE merge $FILE --quiet" \
  -n 2-shards-1-thread "$run1 --shard 0/2 & first=\$!; $run1 --shard 1/2 && wait \$first && $PIPE merge $FILE --quiet" >&2

# The 1-process run once more, for its per-stage figures.
rm -rf "$OUT"
$run
python3 - bench/out/shards.json "$OUT/run.json" "$(uptime)" <<'PY' | tee bench/out/shards.md
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
base = results["1-process"]["mean"]
print(f"load: {sys.argv[3].split('load average:')[-1].strip()}\n")
print("| run | mean s | stddev s | speed-up |")
print("|---|---:|---:|---:|")
for name, r in results.items():
    print(f"| {name} | {r['mean']:.2f} | {r['stddev']:.2f} | {base / r['mean']:.2f}x |")
report = json.load(open(sys.argv[2]))
print("\n| stage (1-process) | rows | busy s | ms per row |")
print("|---|---:|---:|---:|")
for s in report["stages"]:
    rows = max(s["rows_in"], s["rows_out"])
    print(f"| {s['id']} | {rows} | {s['seconds']:.2f} | {1000 * s['seconds'] / max(rows, 1):.2f} |")
PY
