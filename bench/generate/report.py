#!/usr/bin/env python3
"""Writes bench/generate.sh's report from OUT: for each batch size (OUT/b<N>/), hyperfine's JSON of
each round (wall time of every run, mean user and system CPU time of each program), the /usr/bin/time -v output of one more
run of each (peak RSS), each program's own figures (its stderr JSON line; pipe's run.json) and the
sequences each wrote. Prints a Markdown table per batch size with tokens/s and the ratios to
onnxruntime-genai and to the model alone, checks that pipe, genai and the plain loop produced the
same tokens up to each row's first EOS, notes the machine and versions, and writes OUT/results.md.

    bench/.venv-genai/bin/python bench/generate/report.py OUT CASE PROMPT_LENGTH MAX_LENGTH EOS ROUNDS RUNS WARMUP BATCH...
"""
import json
import os
import platform
import re
import statistics
import subprocess
import sys

NAMES = ("pipe", "pipe-b", "genai", "ort", "limit")
LABELS = {"pipe": "pipe (model.generate)", "pipe-b": "pipe-b (--pipe-b)", "genai": "onnxruntime-genai",
          "ort": "Python onnxruntime loop", "limit": "model alone"}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def sequences(path):
    """{id: tokens} from a JSONL of id and tokens (pipe's sink.table or the Python programs)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["id"]: r["tokens"] for r in rows}


def before_eos(seq, prompt_length, eos):
    """The prompt and the new tokens before the first EOS. What follows is padding; the EOS itself
    is left out because onnxruntime-genai leaves it out of a sequence at batch 1 (a row that ends
    on EOS in a larger batch has it, followed by pad tokens)."""
    new = seq[prompt_length:]
    return seq[:prompt_length] + (new[:new.index(eos)] if eos in new else new)


def generated(seq, prompt_length, eos):
    """New tokens a row generated: up to and with its first EOS."""
    new = seq[prompt_length:]
    return new.index(eos) + 1 if eos in new else len(new)


def own_figures(d, name):
    """The program's in-process figures: the JSON line on its stderr; pipe's come from run.json."""
    if name in ("pipe", "pipe-b"):
        path = os.path.join(d, name, "run.json")
        if not os.path.exists(path):
            return {}
        return {"generate_s": json.load(open(path)).get("seconds")}
    log = os.path.join(d, f"{name}.log")
    for line in open(log) if os.path.exists(log) else []:
        if line.startswith("{"):
            return json.loads(line)
    return {}


def timed(d, name):
    """Peak RSS (MB) and user + system CPU seconds of the /usr/bin/time -v run."""
    path = os.path.join(d, f"{name}.time")
    if not os.path.exists(path):
        return float("nan"), float("nan")
    text = open(path).read()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", text)
    cpu = float(user.group(1)) + float(sys_.group(1)) if user and sys_ else float("nan")
    return (int(rss.group(1)) / 1024 if rss else float("nan")), cpu


def rounds(d):
    """{program: (wall times of every timed run, [user + system mean of each round])} over the
    hyperfine calls of a batch size (hyperfine-1.json, ...)."""
    got = {}
    k = 1
    while os.path.exists(os.path.join(d, f"hyperfine-{k}.json")):
        for r in json.load(open(os.path.join(d, f"hyperfine-{k}.json")))["results"]:
            times, cpus = got.setdefault(r["command"], ([], []))
            times += r["times"]
            cpus.append(r["user"] + r["system"])
        k += 1
    return got


def batch_report(d, batch, prompt_length, max_length, eos):
    res = {}
    for name, (times, cpus) in rounds(d).items():
        rss, cpu_once = timed(d, name)
        res[name] = dict(cmd=open(os.path.join(d, f"{name}.cmd")).read().strip(), median=statistics.median(times),
                         mean=statistics.mean(times), sd=statistics.stdev(times) if len(times) > 1 else 0.0,
                         min=min(times), max=max(times), runs=len(times), cpu=statistics.median(cpus),
                         cpu_rounds=cpus, cpu_once=cpu_once, rss=rss, own=own_figures(d, name))
    seqs = {"pipe": sequences(os.path.join(d, "pipe", "tokens.jsonl")),
            "pipe-b": sequences(os.path.join(d, "pipe-b", "tokens.jsonl")),
            "genai": sequences(os.path.join(d, "genai.jsonl")), "ort": sequences(os.path.join(d, "ort.jsonl"))}
    # Counted from a program that keeps each row's EOS (pipe, the plain loop), genai's otherwise.
    ref = seqs["ort"] or seqs["pipe"] or seqs["genai"] or {}
    cut = {k: {i: before_eos(s, prompt_length, eos) for i, s in v.items()} for k, v in seqs.items() if v}
    new_tokens = sum(generated(s, prompt_length, eos) for s in ref.values())
    eos_rows = sum(1 for s in ref.values() if eos in s[prompt_length:])

    lines = [f"### Batch {batch}", "",
             "| program | wall, median (mean ± sd, min-max) | new tokens/s | CPU user+sys | peak RSS | "
             "wall / genai | CPU / genai | wall / model alone | in-process generation |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    g, lim = res.get("genai"), res.get("limit")
    for name in NAMES:
        if name not in res:
            continue
        r = res[name]
        ratio = lambda k, base: f"{r[k] / base[k]:.2f}" if base else "-"
        inproc = r["own"].get("generate_s")
        lines.append(
            f"| {LABELS[name]} | {r['median']:.3f} s ({r['mean']:.3f} ± {r['sd']:.3f}, {r['min']:.3f}-{r['max']:.3f}) "
            f"| {new_tokens / r['median']:,.0f} | {r['cpu']:.3f} s | {r['rss']:.0f} MB "
            f"| {ratio('median', g)} | {ratio('cpu', g)} | {ratio('median', lim)} "
            f"| {f'{inproc:.3f} s' if inproc is not None else '-'} |")
    lines.append("")
    lines.append("Commands:")
    lines.append("")
    for name in NAMES:
        if name in res:
            lines.append(f"- {LABELS[name]}: `{res[name]['cmd']}`")
    lines.append("")
    steps = {n: res[n]["own"].get("steps") for n in ("genai", "ort", "limit") if n in res and res[n]["own"].get("steps")}
    if steps:
        lines.append("- model calls: " + ", ".join(f"{LABELS[n]} {s:,}" for n, s in steps.items())
                     + " (genai: generate_next_token calls; pipe makes one call per new token of the longest row of a batch, as the plain loop does)")
    lines.append(f"- new tokens: {new_tokens:,} ({len(ref)} rows; {eos_rows} rows reached EOS {eos} before "
                 f"max_length {max_length}); tokens/s = new tokens / median wall time of the whole process")
    lines.append("- CPU user+sys: the median over the rounds of hyperfine's mean per round ("
                 + "; ".join(f"{n} " + ", ".join(f"{c:.2f}" for c in res[n]["cpu_rounds"]) for n in NAMES if n in res)
                 + " s); peak RSS: one more run under /usr/bin/time -v (its CPU time: "
                 + ", ".join(f"{n} {res[n]['cpu_once']:.2f} s" for n in NAMES if n in res) + ")")
    load = os.path.join(d, "load.txt")
    if os.path.exists(load):
        lines.append("- load average (1 min) before each round and after the last: "
                     + ", ".join(open(load).read().split()) + " (2 cores; above 2, other work shared the machine)")
    for other in ("pipe", "pipe-b", "ort"):
        if "genai" in cut and other in cut:
            a, b = cut["genai"], cut[other]
            same = sum(1 for i in a if i in b and a[i] == b[i])
            missing = len(set(a) ^ set(b))
            verdict = "same" if same == len(a) and not missing else "DIFFERENT"
            lines.append(f"- tokens, {LABELS[other]} vs onnxruntime-genai, up to each row's first EOS: **{verdict}** "
                         f"({same} of {len(a)} rows identical; {missing} ids in one only)")
    lines.append("")
    return lines, res


def main():
    out, case, prompt_length, max_length, eos, n_rounds, runs, warmup, *batch_sizes = sys.argv[1:]
    prompt_length, max_length, eos = int(prompt_length), int(max_length), int(eos)
    lines = [f"## Generation benchmark, case {case}", "",
             f"{n_rounds} rounds of hyperfine --warmup {warmup} --runs {runs} over all four programs (the order "
             f"rotated each round; wall: the median of all {int(n_rounds) * int(runs)} timed runs), greedy search, "
             f"max_length {max_length} (prompt of {prompt_length} + {max_length - prompt_length} new tokens).", ""]
    summary = []
    for b in batch_sizes:
        part, res = batch_report(os.path.join(out, f"b{b}"), b, prompt_length, max_length, eos)
        lines += part
        if "pipe" in res and "genai" in res:
            p, g = res["pipe"], res["genai"]
            summary.append(f"- batch {b}: pipe/genai wall **{p['median'] / g['median']:.2f}**, "
                           f"CPU **{p['cpu'] / g['cpu']:.2f}**" + (
                               f"; pipe/model alone wall {p['median'] / res['limit']['median']:.2f}" if "limit" in res else ""))
    lines += ["Goals of issue 17 (case a, batch 16: wall and CPU both <= 0.8x genai; case c: within 5% of the model alone):", ""]
    lines += summary
    import numpy
    import onnxruntime
    import onnxruntime_genai
    cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
    mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
    doctor = os.path.join(out, "doctor.txt")
    pipe_ort = re.search(r"1\.\d+\.\d+", open(doctor).read()).group(0) if os.path.exists(doctor) else "?"
    lines += ["", "Machine and versions:", "",
              f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {mem}; {platform.system()} {platform.release()}",
              f"- {sh(os.environ.get('PIPE', 'target/release/pipe') + ' --version')} (release build; loads ONNX Runtime {pipe_ort}); "
              + (f"pipe-b: {os.environ['PIPE_B']}; " if os.environ.get("PIPE_B") else "")
              + f"onnxruntime-genai {onnxruntime_genai.__version__}, onnxruntime {onnxruntime.__version__} (the genai "
              f"wheel loads this package's library), numpy {numpy.__version__}, Python {platform.python_version()}; "
              f"{sh('hyperfine --version')}"]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
