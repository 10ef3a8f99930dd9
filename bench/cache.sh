#!/usr/bin/env bash
# The per-row cache's benchmark, in one command (see BENCHMARKS.md, "The per-row cache"):
#
#   bench/cache.sh                    # 2,000 images + 100 new, the light model, 3 runs each
#   bench/cache.sh --count 200 --new 10 --runs 1   # a quick check
#
# Times, in one hyperfine session, the image pipeline (bench/pipeline.toml: JPEGs -> 224x224
# tensors -> a ResNet-like classifier -> Parquet) over one folder as a user meets it:
#   first      the folder of COUNT + NEW images, the cache empty (every row computed and stored)
#   unchanged  the same folder again, the cache full (no model call)
#   grown      the folder after NEW images were added to COUNT, the cache holding the COUNT
#              (only the NEW rows computed; the cache is restored before each run)
# and the showcase pipeline.toml (diffusion in a retry loop, then a classifier) first and
# unchanged. Each command runs once more under /usr/bin/time -v (peak RSS); run.json's cache
# figures (hits, misses) are printed for each. Results go to bench/out/cache/.
#
# What is missing is made first, as bench/run.sh does: hyperfine, target/release/pipe, the images
# (bench/make_images.py) and the light model (bench/make_model.py), with .venv's Python
# (numpy, pillow, onnx).
#
# Options:
#   --count N   images the cache holds before the folder grows (default 2000)
#   --new N     images added (default 100)
#   --runs N    hyperfine runs per command (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=2000
NEW=100
RUNS=3
PY=.venv/bin/python
OUT=bench/out/cache

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT="$2"; shift 2 ;;
    --new) NEW="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cache.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
log() { echo "cache.sh: $*" >&2; }

command -v hyperfine >/dev/null || { apt-get install -y hyperfine || { apt-get update && apt-get install -y hyperfine; }; }
[ -x "$PY" ] || { log "no Python venv at $PY (numpy, pillow, onnx)"; exit 1; }
[ -x target/release/pipe ] || cargo build --release --bin pipe
PIPE=$PWD/target/release/pipe
# The project's ONNX Runtime, named explicitly (a release build kept in another target folder
# does not find .pipe/ by itself).
LIB=.pipe/onnxruntime/libonnxruntime.so.1.31.1
[ -f "$LIB" ] || scripts/setup --no-build
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/$LIB}

# --- inputs: ALL images made once; the folder holds the first COUNT, then all of them ----------
ALL=$((COUNT + NEW))
SOURCE=bench/data/images-$ALL
have=$( (find "$SOURCE" -maxdepth 1 -name "*.jpg" 2>/dev/null || true) | wc -l)
if [ "$have" -ne "$ALL" ]; then
  log "making $ALL images in $SOURCE"
  rm -rf "$SOURCE"
  "$PY" bench/make_images.py --count "$ALL" --out "$SOURCE"
fi
[ -f bench/resnet-light.onnx ] || "$PY" bench/make_model.py --out bench/resnet-light.onnx --widths 32 64 128 256

WORK=$PWD/$OUT/work
rm -rf "$WORK" && mkdir -p "$WORK/folder"
FOLDER=$WORK/folder
# Hard links: the same files, named as in the source folder, so the ids are the same.
mapfile -t FILES < <(find "$SOURCE" -maxdepth 1 -name "*.jpg" | sort)
for f in "${FILES[@]:0:$COUNT}"; do ln "$f" "$FOLDER/"; done
# collect.files trusts a file's stamp (size, times, inode) for its content only once the file has
# not changed for 2 seconds (a change within the same tick of the clock could go unseen); a link
# changes a file's change time, so let the folder settle, as a user's folder has.
sleep 2.1

IMAGES="$PIPE run bench/pipeline.toml --quiet --set files.path=$FOLDER --set classify.model=resnet-light.onnx --output-dir $WORK/out"
SHOWCASE="$PIPE run pipeline.toml --quiet --output-dir $WORK/showcase-out"
export PIPE_CACHE_DIR=$WORK/cache

log "filling the cache with the first $COUNT images"
rm -rf "$PIPE_CACHE_DIR" && $IMAGES && cp -a "$PIPE_CACHE_DIR" "$WORK/cache-$COUNT"
for f in "${FILES[@]:$COUNT}"; do ln "$f" "$FOLDER/"; done
sleep 2.1
log "the folder now holds $ALL images"

hyperfine --runs "$RUNS" --export-json "$OUT/hyperfine.json" \
  --command-name "images first ($ALL, cache empty)" --prepare "rm -rf $PIPE_CACHE_DIR" "$IMAGES" \
  --command-name "images unchanged ($ALL, cache full)" --prepare "true" "$IMAGES" \
  --command-name "images grown ($NEW new of $ALL)" --prepare "rm -rf $PIPE_CACHE_DIR; cp -a $WORK/cache-$COUNT $PIPE_CACHE_DIR" "$IMAGES" \
  --command-name "showcase first (cache empty)" --prepare "rm -rf $PIPE_CACHE_DIR" "$SHOWCASE" \
  --command-name "showcase unchanged (cache full)" --prepare "true" "$SHOWCASE"

figures() {  # NAME RUN_JSON: the cached stages' hits and misses
  "$PY" - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
stages = json.load(open(path))["stages"]
def figure(s):
    c = s["cache"]
    if "hits" not in c:  # a stage the early cut-off skipped rows of
        unread = f" ({c['unread']} files not read)" if "unread" in c else ""
        return f"{s['id']} skipped {c['skipped']}{unread}"
    early = f" ({c['early_hits']} answered before the stages upstream)" if "early_hits" in c else ""
    return f"{s['id']} {c['hits']} hits / {c['misses']} misses{early}"
cache = ", ".join(figure(s) for s in stages if "cache" in s)
print(f"{name}: {cache}")
PY
}
once() {  # NAME PREPARE COMMAND RUN_JSON
  bash -c "$2"
  # shellcheck disable=SC2086  # the command is split into words on purpose
  /usr/bin/time -v -o "$OUT/$1.time" $3
  figures "$1" "$4" | tee -a "$OUT/figures.txt"
  echo "$1: peak RSS $(awk -F: '/Maximum resident/ {print $2}' "$OUT/$1.time") KB, wall $(awk '/Elapsed/ {print $NF}' "$OUT/$1.time")" | tee -a "$OUT/figures.txt"
}
rm -f "$OUT/figures.txt"
once images-first "rm -rf $PIPE_CACHE_DIR" "$IMAGES" "$WORK/out/run.json"
once images-unchanged "true" "$IMAGES" "$WORK/out/run.json"
once images-grown "rm -rf $PIPE_CACHE_DIR; cp -a $WORK/cache-$COUNT $PIPE_CACHE_DIR" "$IMAGES" "$WORK/out/run.json"
once showcase-first "rm -rf $PIPE_CACHE_DIR" "$SHOWCASE" "$WORK/showcase-out/run.json"
once showcase-unchanged "true" "$SHOWCASE" "$WORK/showcase-out/run.json"
echo "cache size: $(du -sh "$PIPE_CACHE_DIR" | cut -f1) for the showcase; $(du -sh "$WORK/cache-$COUNT" | cut -f1) for $COUNT images" | tee -a "$OUT/figures.txt"

"$PY" - "$OUT/hyperfine.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
by = {r["command"]: r for r in results}
print("| run | wall (mean ± sd) | user | sys | of the first run |")
print("|---|---:|---:|---:|---:|")
first = {}
for r in results:
    kind = r["command"].split()[0]
    if "first" in r["command"]:
        first[kind] = r["mean"]
    share = r["mean"] / first[kind]
    print(f"| {r['command']} | {r['mean']:.3f} s ± {r['stddev'] or 0:.3f} | {r['user']:.2f} s | {r['system']:.2f} s | {share:.1%} |")
PY
