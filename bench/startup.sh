#!/usr/bin/env bash
# pipe's start-up, in one command:
#
#   bench/startup.sh               # hyperfine, 20 runs of each after 3 warm-ups
#   bench/startup.sh --runs 50
#
# Times, side by side in one hyperfine session (whole processes, as a user runs them):
#   no-model    pipe validate bench/startup/no-model.toml   the binary, the config, a plan without
#                                                           a model (collect.latent -> sink.table)
#   validate-1  pipe validate bench/startup/one-row.toml    + ONNX Runtime loaded, one session
#                                                           (the project's 150 KB digit classifier)
#   run-1       pipe run bench/startup/one-row.toml --quiet + the run of one row and its outputs
#   validate-2  pipe validate bench/startup/two-models.toml two small models (GAN generator, then
#                                                           the classifier): a second session
#   showcase    pipe validate pipeline.toml                 the showcase: two models, a retry loop
# then, once each, `PIPE_LOG=debug` for the planner's own timings (reading the file, each stage's
# build) and `/usr/bin/time -v` for peak RSS, and prints a Markdown table. Also written to
# bench/out/startup.md beside hyperfine's JSON.
#
# What is missing is made first: hyperfine (apt-get), target/release/pipe (cargo build --release).
#
# Options:
#   --runs N     hyperfine runs (default 20)
#   --pipe PATH  the pipe binary to time (default target/release/pipe)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=20
PIPE=target/release/pipe
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --pipe) PIPE="$2"; shift 2 ;;   # another pipe binary (for comparing builds)
    -h|--help) usage; exit 0 ;;
    *) echo "startup.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
log() { echo "startup.sh: $*" >&2; }

command -v hyperfine >/dev/null || { apt-get install -y hyperfine || (apt-get update && apt-get install -y hyperfine); }
[ -x /usr/bin/time ] || apt-get install -y time
[ -x "$PIPE" ] || { log "building target/release/pipe"; cargo build --release --bin pipe; }
mkdir -p bench/out

names=(no-model validate-1 run-1 validate-2 showcase)
cmds=(
  "$PIPE validate bench/startup/no-model.toml"
  "$PIPE validate bench/startup/one-row.toml"
  "$PIPE run bench/startup/one-row.toml --quiet"
  "$PIPE validate bench/startup/two-models.toml"
  "$PIPE validate pipeline.toml"
)
args=()
for i in "${!names[@]}"; do args+=(--command-name "${names[$i]}" "${cmds[$i]}"); done
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup 3 --runs "$RUNS" --export-json bench/out/startup.json "${args[@]}" >&2
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

for i in "${!names[@]}"; do
  # shellcheck disable=SC2086  # split into words on purpose
  /usr/bin/time -v -o "bench/out/startup-${names[$i]}.time" ${cmds[$i]} >/dev/null 2>&1
  # shellcheck disable=SC2086
  PIPE_LOG=debug ${cmds[$i]} 2>"bench/out/startup-${names[$i]}.log" >/dev/null || true
done

python3 - "$RUNS" <<'PY' | tee bench/out/startup.md
import json, re, sys
runs = sys.argv[1]
results = {r["command"]: r for r in json.load(open("bench/out/startup.json"))["results"]}
def rss(name):
    text = open(f"bench/out/startup-{name}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
def planner(name):
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(f"bench/out/startup-{name}.log").read())
    parts = []
    m = re.search(r"read_ms=([\d.]+) built_ms=([\d.]+)", text)
    if m:
        parts.append(f"read {float(m.group(1)):.1f}, plan {float(m.group(2)):.1f}")
    builds = re.findall(r"built stage=(\S+) uses=(\S+) ms=([\d.]+)", text)
    slow = [f"{s} {float(ms):.1f}" for s, _, ms in builds if float(ms) >= 1.0]
    if slow:
        parts.append("builds: " + ", ".join(slow))
    return "; ".join(parts)
print(f"| command | wall (ms), median of {runs} | mean ± σ (ms) | user + sys (ms) | peak RSS (MB) | planner (ms, `PIPE_LOG=debug`) |")
print("|---|---:|---:|---:|---:|---|")
for name, r in results.items():
    print(
        f"| {name} | {r['median'] * 1e3:.1f} | {r['mean'] * 1e3:.1f} ± {r['stddev'] * 1e3:.1f} | "
        f"{(r['user'] + r['system']) * 1e3:.0f} | {rss(name):.0f} | {planner(name)} |"
    )
PY
