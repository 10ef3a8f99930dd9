#!/usr/bin/env bash
# The image benchmark, in one command (see bench/README.md):
#
#   bench/run.sh                 # 5,000 images, 2 model threads, hyperfine --warmup 1 --runs 3
#   bench/run.sh --count 200     # a quick check on the first 200 images
#
# Times three programs doing the same model work over the same images:
#   pipe    target/release/pipe run bench/pipeline.toml --quiet
#   python  .venv/bin/python bench/baseline.py        (PIL + numpy + onnxruntime, batched)
#   limit   .venv/bin/python bench/model_alone.py     (the model alone on pre-made tensors)
# each with hyperfine (wall time) and once more under /usr/bin/time -v (peak RSS), and prints a
# Markdown table with wall time, rows/s, peak RSS and the ratios pipe/python and pipe/limit. It is
# also written to bench/out/results.md, beside hyperfine's JSON and the raw /usr/bin/time output.
#
# What is missing is made first: hyperfine (apt-get), the ONNX Runtime library pipe loads
# (scripts/setup --no-build: the same 1.31.1 as the Python package), target/release/pipe (cargo
# build --release), the images (bench/make_images.py) and the model (bench/make_model.py).
#
# Options:
#   --count N      images (default 5000; other counts use bench/data/images-N, made on demand)
#   --threads N    intra-op threads of the model in all three programs (default 2)
#   --runs N       hyperfine runs (default 3)
#   --warmup N     hyperfine warm-up runs (default 1)
#   --model M      "heavy" (default: bench/resnet.onnx, 1.35 GMAC per image, the model dominates)
#                  or "light" (bench/resnet-light.onnx, ResNet-18 at half width, 0.48 GMAC)
#   --pin          run every program with `taskset -c 0-(threads-1)`: the same cores for all,
#                  so pipe's decoding cannot use cores the Python script leaves idle
#   --only LIST    comma-separated parts to run: pipe,python,limit (default all three)
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=5000
THREADS=2
RUNS=3
WARMUP=1
MODEL=heavy
PIN=0
ONLY=pipe,python,limit
ORT_VERSION=1.31.1
PY=.venv/bin/python
OUT=bench/out

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --pin) PIN=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$MODEL" in heavy|light) ;; *) echo "run.sh: --model is heavy or light" >&2; exit 2 ;; esac
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
log() { echo "run.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing $* with apt-get"
  $sudo apt-get install -y "$@" || { $sudo apt-get update && $sudo apt-get install -y "$@"; }
}
command -v hyperfine >/dev/null || apt_install hyperfine
[ -x /usr/bin/time ] || apt_install time
command -v taskset >/dev/null || [ "$PIN" -eq 0 ] || apt_install util-linux
[ -x "$PY" ] || { log "no Python venv at $PY (numpy, pillow, onnxruntime==$ORT_VERSION, pyarrow)"; exit 1; }

# --- one ONNX Runtime for everyone -------------------------------------------------------------
. bench/ort.sh
use_one_ort "$PY"

mkdir -p "$OUT"
if wants pipe; then
  if [ ! -x target/release/pipe ]; then
    log "building target/release/pipe"
    cargo build --release --bin pipe
  fi
  check_pipe_ort target/release/pipe "$OUT"
fi

# --- inputs ------------------------------------------------------------------------------------
if [ "$COUNT" -eq 5000 ]; then IMAGES=data/images; else IMAGES=data/images-$COUNT; fi
have=$( (find "bench/$IMAGES" -maxdepth 1 -name "*.jpg" 2>/dev/null || true) | wc -l)
if [ "$have" -ne "$COUNT" ]; then
  log "making $COUNT images in bench/$IMAGES"
  rm -rf "bench/$IMAGES"
  "$PY" bench/make_images.py --count "$COUNT" --out "bench/$IMAGES"
fi
if [ "$MODEL" = heavy ]; then MODEL_FILE=resnet.onnx; else MODEL_FILE=resnet-light.onnx; fi
if [ ! -f "bench/$MODEL_FILE" ]; then
  if [ "$MODEL" = heavy ]; then
    "$PY" bench/make_model.py --out "bench/$MODEL_FILE"
  else
    "$PY" bench/make_model.py --out "bench/$MODEL_FILE" --widths 32 64 128 256
  fi
fi

# --- the three commands (the defaults spelled out only when they change) -----------------------
PIPE_CMD="target/release/pipe run bench/pipeline.toml --quiet"
PY_CMD="$PY bench/baseline.py"
LIMIT_CMD="$PY bench/model_alone.py"
if [ "$COUNT" -ne 5000 ]; then
  PIPE_CMD+=" --set files.path=$IMAGES"; PY_CMD+=" --images bench/$IMAGES"; LIMIT_CMD+=" --count $COUNT"
fi
if [ "$THREADS" -ne 2 ]; then
  PIPE_CMD+=" --set classify.threads=$THREADS"; PY_CMD+=" --threads $THREADS"; LIMIT_CMD+=" --threads $THREADS"
fi
if [ "$MODEL" != heavy ]; then
  PIPE_CMD+=" --set classify.model=$MODEL_FILE"; PY_CMD+=" --model bench/$MODEL_FILE"
  LIMIT_CMD+=" --model bench/$MODEL_FILE"
fi
PREFIX=""
[ "$PIN" -eq 0 ] || PREFIX="taskset -c 0-$((THREADS - 1)) "

measure() {  # NAME COMMAND
  local name=$1 cmd="$PREFIX$2"
  log "$name: $cmd"
  hyperfine --warmup "$WARMUP" --runs "$RUNS" --export-json "$OUT/$name.json" --command-name "$name" "$cmd"
  log "$name: once more under /usr/bin/time -v for the peak RSS"
  # shellcheck disable=SC2086  # the command is split into words on purpose
  /usr/bin/time -v -o "$OUT/$name.time" $cmd 2> "$OUT/$name.log"
  echo "$cmd" > "$OUT/$name.cmd"
}
rm -f "$OUT"/{pipe,python,limit}.{json,time,log,cmd}
wants pipe && measure pipe "$PIPE_CMD"
wants python && measure python "$PY_CMD"
wants limit && measure limit "$LIMIT_CMD"

# --- the report --------------------------------------------------------------------------------
"$PY" bench/report.py "$OUT" "$COUNT" "$THREADS" "$RUNS" "$WARMUP" "$MODEL_FILE" "$PIN"
