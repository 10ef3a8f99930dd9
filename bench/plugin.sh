#!/usr/bin/env bash
# The process-plugin benchmark, in one command:
#
#   bench/plugin.sh                  # 100,000 rows, batch sizes 64 (the default) and 1024
#   bench/plugin.sh --rows 10000     # a quick check
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
#   --rows N          rows (default 100000)
#   --batch-sizes L   comma-separated batch sizes (default 64,1024)
#   --runs N          hyperfine runs (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=100000
SIZES=64,1024
RUNS=5
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS="$2"; shift 2 ;;
    --batch-sizes) SIZES="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "plugin.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
log() { echo "plugin.sh: $*" >&2; }

command -v hyperfine >/dev/null || { apt-get install -y hyperfine || (apt-get update && apt-get install -y hyperfine); }
[ -x /usr/bin/time ] || apt-get install -y time
[ -x .pipe/venv/bin/python3 ] || scripts/setup --no-build --python
[ -x target/release/pipe ] || { log "building target/release/pipe"; cargo build --release --bin pipe; }
export PATH="$PWD/.pipe/venv/bin:$PATH"   # python3 with pyarrow and pipe_plugin, for the plugin

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
mean() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print("%.3f ± %.3f" % (r["mean"], r["stddev"]))' "$1"; }
rss() { awk -F': ' '/Maximum resident/ {printf "%.0f", $2/1024}' "$1"; }
for size in ${SIZES//,/ }; do
  for name in base plugin; do
    cmd="target/release/pipe run bench/plugin/$name.toml --quiet --set pipeline.batch_size=$size"
    log "$name, batch size $size: $cmd"
    hyperfine --warmup 1 --runs "$RUNS" --export-json "bench/out/plugin-$name-$size.json" --command-name "$name" "$cmd"
    # shellcheck disable=SC2086  # split into words on purpose
    /usr/bin/time -v -o "bench/out/plugin-$name-$size.time" $cmd
  done
  b=$(mean "bench/out/plugin-base-$size.json"); p=$(mean "bench/out/plugin-plugin-$size.json")
  ratio=$(python3 -c "print(f'{${p%% *} / ${b%% *}:.2f}')")
  echo "| $size | $b | $p | $ratio | $(rss "bench/out/plugin-base-$size.time") | $(rss "bench/out/plugin-plugin-$size.time") |" >> bench/out/plugin.md
done
rows=$(python3 -c 'import json; print(json.load(open("bench/out/plugin/run.json"))["stages"][-1]["rows_in"])')
[ "$rows" -eq "$ROWS" ] || { log "the plugin pipeline wrote $rows rows, not $ROWS"; exit 1; }
cat bench/out/plugin.md
