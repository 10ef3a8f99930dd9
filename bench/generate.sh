#!/usr/bin/env bash
# The text generation benchmark, in one command (see bench/README.md, "The generation benchmark"):
#
#   bench/generate.sh                  # case a (tiny-random-gpt2), batches 1 and 16, 3 rounds of 3 runs
#   bench/generate.sh --batches 16 --rounds 1 --runs 3
#   bench/generate.sh --case c         # GPT-2-small-shaped (built first), batch 16, 4 rounds of 1
#
# Times four programs doing greedy generation on the same 256 prompts of 8 token ids, to
# max_length 128 (prompt + new tokens, onnxruntime-genai's meaning: 120 new tokens a row; case c:
# 32 prompts to max_length 64), with
# the same ONNX Runtime (1.31.1) on the CPU:
#   pipe    target/release/pipe run bench/generate/pipeline.toml --quiet   (collect.table -> model.generate -> sink.table)
#   genai   onnxruntime-genai through its Python API               (bench/generate/genai_run.py)
#   ort     a plain Python onnxruntime KV-cache loop               (bench/generate/ort_loop.py)
#   limit   the same model calls on inputs made beforehand         (bench/generate/model_alone.py)
# as whole processes: per batch size, --rounds hyperfine calls of all four (wall, user and system
# time), the order of the four rotated from round to round so that a burst of other work on the
# machine does not fall on one program only; each program once more under /usr/bin/time -v first
# (peak RSS; that run also writes the sequences). It
# prints a Markdown table per batch size (tokens/s, wall, CPU, peak RSS, ratios to genai and to the
# model alone), checks that pipe and the plain loop give genai's tokens up to each row's first EOS,
# and writes it all to bench/out/generate/results.md.
#
# What is missing is made first: hyperfine and /usr/bin/time (apt-get), the venv bench/.venv-genai
# (pip install onnxruntime-genai numpy onnxruntime==1.31.1), the ONNX Runtime library pipe loads
# (scripts/setup --no-build), target/release/pipe (cargo build --release) and the prompts
# (bench/generate/make_prompts.py).
#
# Options:
#   --case C       a: tests/fixtures/tiny-random-gpt2 (default); b: examples/models/tiny-gpt with
#                  bench/generate/tiny-gpt/genai_config.json (results in bench/out/generate-b);
#                  c: a GPT-2-small-shaped decoder (124M parameters, random weights, 500 MB, built
#                  by bench/generate/make_gpt2_small.py into bench/data/generate/gpt2-small when
#                  missing), 32 prompts to max_length 64, batch 16, 4 rounds of 1 run, no warm-up
#                  (results in bench/out/generate-c; about 4 minutes on 2 cores)
#   --batches L    comma-separated batch sizes (default 1,16; case c: 16)
#   --rounds N     hyperfine calls per batch size (default 3; case c: 4)
#   --runs N       hyperfine runs of each program per round (default 3; case c: 1)
#   --warmup N     hyperfine warm-up runs of each program per round (default 1; case c: 0)
#   --threads N    intra-op threads in all four programs (default: each one's own default: pipe
#                  one for a decoder file under 32 MiB (cases a and b), else half the logical
#                  cores; onnxruntime-genai half of them (at most 16); ONNX Runtime's Python
#                  sessions all physical cores; on a 2-core machine 1, 1, 2 in cases a and b, 1,
#                  1, 2 in case c). pipe also generates several batches at once on a small
#                  decoder (model.generate's concurrent_batches: cores / threads, at most 8; 2
#                  sessions in cases a and b on 2 cores, also with --threads 1)
#   --only LIST    comma-separated programs: pipe,genai,ort,limit (default all four)
#   --pipe PATH    the pipe binary to time (default target/release/pipe, built when missing)
#   --pipe-b PATH  a second pipe binary, timed in the same rounds as the first (program `pipe-b`,
#                  e.g. a build of an earlier commit: a before/after comparison in one session)
#   --out DIR      where the results go (default bench/out/generate)
set -euo pipefail
cd "$(dirname "$0")/.."

CASE=a
BATCHES=
ROUNDS=
RUNS=
WARMUP=
THREADS=
ONLY=pipe,genai,ort,limit
PIPE=target/release/pipe
PIPE_B=
ORT_VERSION=1.31.1
VENV=bench/.venv-genai
PY=$VENV/bin/python
OUT=bench/out/generate

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --case) CASE="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --pipe) PIPE="$2"; shift 2 ;;
    --pipe-b) PIPE_B="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "generate.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
log() { echo "generate.sh: $*" >&2; }

# --- the case: model folder, decoder file, prompts, tokens -------------------------------------
case "$CASE" in
  a)
    MODEL_DIR=tests/fixtures/tiny-random-gpt2
    DECODER=$MODEL_DIR/past.onnx
    VOCAB=1000 EOS=98 PAD=98
    PROMPT_LENGTH=8 COUNT=256 MAX_LENGTH=128
    ;;
  b)
    # The project's tiny-gpt through a genai_config.json written for it (bench/generate/tiny-gpt/;
    # genai reproduces its reference.json with it). genai refuses a filename with "..", so the
    # folder both programs load is a scratch one: that config beside a link to the model.
    MODEL_DIR=bench/data/generate/tiny-gpt
    DECODER=examples/models/tiny-gpt/model.onnx
    mkdir -p "$MODEL_DIR"
    cp bench/generate/tiny-gpt/genai_config.json "$MODEL_DIR/"
    ln -sf "$PWD/$DECODER" "$MODEL_DIR/model.onnx"
    VOCAB=1024 EOS=0 PAD=0
    PROMPT_LENGTH=8 COUNT=256 MAX_LENGTH=128
    ;;
  c)
    # GPT-2-small-shaped, random weights, exported by examples/models/tiny-gpt/export.py with the
    # split int64 cache (as case b), and its genai_config.json: built here, not committed. The
    # model's work dominates, so fewer prompts and tokens do (32 prompts, 56 new tokens a row).
    MODEL_DIR=bench/data/generate/gpt2-small
    DECODER=$MODEL_DIR/model.onnx
    if [ ! -f "$DECODER" ] || [ ! -f "$MODEL_DIR/genai_config.json" ]; then
      [ -x .pipe/venv/bin/python ] || scripts/setup --python --no-build
      log "building case c's model into $MODEL_DIR (bench/generate/make_gpt2_small.py)"
      .pipe/venv/bin/python bench/generate/make_gpt2_small.py --out "$MODEL_DIR"
    fi
    VOCAB=50257 EOS=50256 PAD=50256
    PROMPT_LENGTH=8 COUNT=32 MAX_LENGTH=64
    # One run of each program per round, the order rotated: a burst of other work on the
    # machine then falls on single runs of different programs, not on all runs of one.
    : "${BATCHES:=16}" "${ROUNDS:=4}" "${RUNS:=1}" "${WARMUP:=0}"
    ;;
  *) echo "generate.sh: --case $CASE is not a case (a, b or c)" >&2; exit 2 ;;
esac
: "${BATCHES:=1,16}" "${ROUNDS:=3}" "${RUNS:=3}" "${WARMUP:=1}"
if [ "$CASE" = a ]; then
  PROMPTS=bench/data/generate/prompts-${COUNT}x${PROMPT_LENGTH}.jsonl
else
  PROMPTS=bench/data/generate/prompts-$CASE-${COUNT}x${PROMPT_LENGTH}.jsonl
  [ "$OUT" != bench/out/generate ] || OUT=bench/out/generate-$CASE
fi

# --- tools -------------------------------------------------------------------------------------
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing $* with apt-get"
  $sudo apt-get install -y "$@" || { $sudo apt-get update && $sudo apt-get install -y "$@"; }
}
command -v hyperfine >/dev/null || apt_install hyperfine
[ -x /usr/bin/time ] || apt_install time
if [ ! -x "$PY" ]; then
  log "making the venv $VENV (onnxruntime-genai, numpy, onnxruntime==$ORT_VERSION)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet onnxruntime-genai numpy "onnxruntime==$ORT_VERSION"
fi
# The genai wheel loads the onnxruntime package's library, so that package must be the version too.
. bench/ort.sh
use_one_ort "$PY"

mkdir -p "$OUT"
if wants pipe; then
  if [ ! -x "$PIPE" ] && [ "$PIPE" = target/release/pipe ]; then
    log "building target/release/pipe"
    cargo build --release --bin pipe
  fi
  check_pipe_ort "$PIPE" "$OUT"
fi
[ -z "$PIPE_B" ] || check_pipe_ort "$PIPE_B" "$OUT"
[ -f "$PROMPTS" ] || "$PY" bench/generate/make_prompts.py --out "$PROMPTS" \
  --count "$COUNT" --length "$PROMPT_LENGTH" --vocab "$VOCAB" --avoid "$PAD" "$EOS"

# --- per batch size: one run of each under /usr/bin/time -v, then --rounds hyperfine calls ---
G=bench/generate
for B in ${BATCHES//,/ }; do
  D=$OUT/b$B
  rm -rf "$D"; mkdir -p "$D"
  # --no-cache: every run generates (a cached run would only read the results back).
  PIPE_CMD="$PIPE run $G/pipeline.toml --quiet --no-cache --output-dir $D/pipe --set generate.batch_size=$B"
  GENAI_CMD="$PY $G/genai_run.py --model $MODEL_DIR --prompts $PROMPTS --batch $B --max-length $MAX_LENGTH --out $D/genai.jsonl"
  ORT_CMD="$PY $G/ort_loop.py --model $DECODER --prompts $PROMPTS --eos $EOS --pad $PAD --batch $B --max-length $MAX_LENGTH --out $D/ort.jsonl"
  LIMIT_CMD="$PY $G/model_alone.py --model $DECODER --rows $COUNT --batch $B --prompt-length $PROMPT_LENGTH --max-length $MAX_LENGTH --steps-from $D/ort.jsonl --eos $EOS"
  if [ "$CASE" != a ]; then
    PIPE_CMD+=" --set prompts.path=../../$PROMPTS --set generate.model=../../$MODEL_DIR --set generate.max_length=$MAX_LENGTH"
  fi
  if [ -n "$THREADS" ]; then
    PIPE_CMD+=" --set generate.threads=$THREADS"
    GENAI_CMD+=" --threads $THREADS"; ORT_CMD+=" --threads $THREADS"; LIMIT_CMD+=" --threads $THREADS"
  fi
  names=() cmds=()
  wants pipe && names+=(pipe) cmds+=("$PIPE_CMD")
  if [ -n "$PIPE_B" ]; then
    names+=(pipe-b) cmds+=("$PIPE_B ${PIPE_CMD#"$PIPE "}")
    cmds[-1]=${cmds[-1]/--output-dir $D\/pipe /--output-dir $D/pipe-b }
  fi
  wants genai && names+=(genai) cmds+=("$GENAI_CMD")
  # The limit takes its call counts from the plain loop's sequences, so the loop runs first.
  if wants ort || wants limit; then names+=(ort) cmds+=("$ORT_CMD"); fi
  wants limit && names+=(limit) cmds+=("$LIMIT_CMD")
  hf=()
  for i in "${!names[@]}"; do
    name=${names[$i]} cmd=${cmds[$i]}
    echo "$cmd" > "$D/$name.cmd"
    log "batch $B, $name: $cmd"
    # shellcheck disable=SC2086  # the command is split into words on purpose
    /usr/bin/time -v -o "$D/$name.time" $cmd 2> "$D/$name.log"
    if [ "$name" != ort ] || wants ort; then hf+=(--command-name "$name" "$cmd"); fi
  done
  for ((round = 1; round <= ROUNDS; round++)); do
    log "batch $B, round $round of $ROUNDS: hyperfine --warmup $WARMUP --runs $RUNS ($(cut -d' ' -f1-3 /proc/loadavg) load)"
    cut -d' ' -f1 /proc/loadavg >> "$D/load.txt"
    hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --export-json "$D/hyperfine-$round.json" "${hf[@]}"
    hf=("${hf[@]:3}" "${hf[@]:0:3}")   # the next round starts with the next program
  done
  cut -d' ' -f1 /proc/loadavg >> "$D/load.txt"
done

# --- the report --------------------------------------------------------------------------------
PIPE="$PIPE" PIPE_B="$PIPE_B" "$PY" bench/generate/report.py "$OUT" "$CASE" "$PROMPT_LENGTH" "$MAX_LENGTH" "$EOS" "$ROUNDS" "$RUNS" "$WARMUP" ${BATCHES//,/ }
