#!/usr/bin/env bash
# The process-plugin benchmark, in one command:
#
#   bench/plugin.sh                  # 1,000,000 rows, pipeline batch size 64 (the default)
#   bench/plugin.sh --rows 100000 --batch-sizes 64,1024
#
# Times two pipelines over the same small rows (id, text of ~40 characters, an integer):
#   base     bench/plugin/base.toml    collect.table (CSV) -> sink.table (Parquet)
#   plugin   bench/plugin/plugin.toml  the same with a pass-through Python process plugin
#            (tests/fixtures/plugins/passthrough.py, the SDK's smallest plugin) in between
# with hyperfine (wall time) and once more under /usr/bin/time -v (peak RSS), for each batch
# size, and prints a Markdown table with the ratio plugin/base. Also written to
# bench/out/plugin.md beside hyperfine's JSON.
#
# What is missing is made first: hyperfine (apt-get), target/release/pipe (cargo build
# --release), .pipe/venv with pyarrow and the SDK (scripts/setup --no-build --python), the rows.
#
# Options:
#   --rows N          rows (default 1000000)
#   --batch-sizes L   comma-separated batch sizes (default 64)
#   --runs N          hyperfine runs (default 10)
#   --pipe PATH       the pipe binary to time (default target/release/pipe)
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=1000000
SIZES=64
RUNS=10
PIPE=target/release/pipe
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS="$2"; shift 2 ;;
    --batch-sizes) SIZES="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --pipe) PIPE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "plugin.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
log() { echo "plugin.sh: $*" >&2; }

command -v hyperfine >/dev/null || { apt-get install -y hyperfine || (apt-get update && apt-get install -y hyperfine); }
[ -x /usr/bin/time ] || apt-get install -y time
[ -x .pipe/venv/bin/python3 ] || scripts/setup --no-build --python
[ -x "$PIPE" ] || { log "building target/release/pipe"; cargo build --release --bin pipe; }
export PATH="$PWD/.pipe/venv/bin:$PATH"   # python3 with pyarrow, for the plugin
export PYTHONPATH="$PWD/plugins/python"   # the SDK of this checkout, not the copy setup installed

mkdir -p bench/data bench/out
DATA=bench/data/rows.csv
if [ ! -f "$DATA" ] || [ "$(($(wc -l < "$DATA") - 1))" -ne "$ROWS" ]; then
  log "making $ROWS rows in $DATA"
  python3 - "$ROWS" "$DATA" <<'PY'
import sys
rows, path = int(sys.argv[1]), sys.argv[2]
words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
with open(path, "w") as f:
    f.write("key,text,n\n")
    for i in range(rows):
        text = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(6))
        f.write(f"k{i:06d},{text},{i % 1000}\n")
PY
fi

echo "| batch size | base (s) | with plugin (s) | plugin / base | base peak RSS (MB) | plugin run peak RSS (MB) |" > bench/out/plugin.md
echo "|---:|---:|---:|---:|---:|---:|" >> bench/out/plugin.md
mean() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][int(sys.argv[2])]; print("%.3f ± %.3f" % (r["mean"], r["stddev"]))' "$1" "$2"; }
rss() { awk -F': ' '/Maximum resident/ {printf "%.0f", $2/1024}' "$1"; }
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for size in ${SIZES//,/ }; do
  base="$PIPE run bench/plugin/base.toml --quiet --set pipeline.batch_size=$size"
  plugin="$PIPE run bench/plugin/plugin.toml --quiet --set pipeline.batch_size=$size"
  log "batch size $size: $base | $plugin"
  # One hyperfine session, so both are timed under the same load.
  hyperfine -N --warmup 1 --runs "$RUNS" --export-json "bench/out/plugin-$size.json" \
    --command-name base "$base" --command-name plugin "$plugin"
  for name in base plugin; do
    cmd=$base; [ "$name" = plugin ] && cmd=$plugin
    # shellcheck disable=SC2086  # split into words on purpose
    /usr/bin/time -v -o "bench/out/plugin-$name-$size.time" $cmd
  done
  b=$(mean "bench/out/plugin-$size.json" 0); p=$(mean "bench/out/plugin-$size.json" 1)
  ratio=$(python3 -c "print(f'{${p%% *} / ${b%% *}:.2f}')")
  echo "| $size | $b | $p | $ratio | $(rss "bench/out/plugin-base-$size.time") | $(rss "bench/out/plugin-plugin-$size.time") |" >> bench/out/plugin.md
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rows=$(python3 -c 'import json; print(json.load(open("bench/out/plugin/run.json"))["stages"][-1]["rows_in"])')
[ "$rows" -eq "$ROWS" ] || { log "the plugin pipeline wrote $rows rows, not $ROWS"; exit 1; }
cat bench/out/plugin.md
