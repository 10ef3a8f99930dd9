#!/usr/bin/env python3
"""Writes bench/run.sh's report: reads the hyperfine JSON, /usr/bin/time output and command of each
program from OUT (pipe, python, limit), prints a Markdown table with the ratios, compares pipe's and
the baseline's predictions, and notes the machine. Also writes OUT/results.md.

    .venv/bin/python bench/report.py OUT COUNT THREADS RUNS WARMUP MODEL_FILE PIN
"""
import json, os, platform, re, subprocess, sys

out, count, threads, runs, warmup, model, pin = sys.argv[1:]
count = int(count)

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""

res = {}
for name in ("pipe", "python", "limit"):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))["results"][0]
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(os.path.join(out, f"{name}.time")).read())
    res[name] = dict(cmd=open(os.path.join(out, f"{name}.cmd")).read().strip(), mean=r["mean"],
                     sd=r.get("stddev") or 0.0, min=r["min"], max=r["max"],
                     rss=int(rss.group(1)) / 1024 if rss else float("nan"))

labels = {"pipe": "pipe", "python": "Python (baseline.py)", "limit": "model alone (model_alone.py)"}
lines = ["| program | command | wall, mean ± sd (min-max) | rows/s | peak RSS |", "|---|---|---|---|---|"]
for name, r in res.items():
    lines.append(f"| {labels[name]} | `{r['cmd']}` | {r['mean']:.2f} s ± {r['sd']:.2f} ({r['min']:.2f}-{r['max']:.2f}) "
                 f"| {count / r['mean']:.1f} | {r['rss']:.0f} MB |")
lines.append("")
if "pipe" in res and "python" in res:
    q = res["pipe"]["mean"] / res["python"]["mean"]
    lines.append(f"- pipe/Python wall time: **{q:.3f}** (pipe is {1 / q:.2f}x as fast; goal: 2x, a ratio of 0.5 or less)")
if "pipe" in res and "limit" in res:
    q = res["pipe"]["mean"] / res["limit"]["mean"]
    lines.append(f"- pipe/limit wall time: **{q:.3f}** (goal: within 15% of the model alone, 1.15 or less)")
if "limit" in res:
    m = re.search(r"model time ([\d.]+) s", open(os.path.join(out, "limit.log")).read())
    if m:
        t = float(m.group(1))
        lines.append(f"- model alone, model runs only (no start-up): {t:.2f} s, {count / t:.1f} rows/s, "
                     f"{1000 * t / count:.2f} ms per image")

# Same work? Compare the two prediction tables, row by row.
pipe_pq, py_pq = os.path.join(out, "pipe", "predictions.parquet"), os.path.join(out, "baseline", "predictions.parquet")
if "pipe" in res and "python" in res and os.path.exists(pipe_pq) and os.path.exists(py_pq):
    import numpy as np, pyarrow.parquet as pq
    import pyarrow as pa
    def load(p):
        t = pq.read_table(p).sort_by("id")
        col = t.column("logits").combine_chunks()
        if isinstance(col.type, pa.BaseExtensionType):  # arrow.fixed_shape_tensor
            col = col.storage
        return t.column("id").to_pylist(), np.asarray(col.flatten(), dtype=np.float32).reshape(t.num_rows, -1)
    (ia, a), (ib, b) = load(pipe_pq), load(py_pq)
    if ia != ib:
        lines.append(f"- outputs: the ids differ ({len(ia)} rows from pipe, {len(ib)} from Python)")
    else:
        d = np.abs(a - b)
        spread = float(b.std(axis=0).mean())
        va, vb = (a - b.mean(axis=0)).ravel(), (b - b.mean(axis=0)).ravel()
        r = float(np.corrcoef(va, vb)[0, 1]) if len(ia) > 1 else float("nan")
        lines.append(f"- same outputs? {len(ia)} rows with the same ids in both; logits differ by at most {d.max():.4f} "
                     f"(mean {d.mean():.5f}) while they vary by {spread:.3f} (sd) from image to image; the "
                     f"image-to-image variations correlate at r = {r:.4f}; top-1 agrees on "
                     f"{100 * float((a.argmax(1) == b.argmax(1)).mean()):.1f}% of rows ({len(set(b.argmax(1)))} distinct "
                     f"classes: the weights are random). Differences come from the JPEG decoders' and resizers' rounding.")

import numpy, onnxruntime, PIL
doctor = os.path.join(out, "doctor.txt")
cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
lines += ["", "Machine and versions:", "",
          f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {mem}; {platform.system()} {platform.release()}; "
          f"{sh('. /etc/os-release && echo $PRETTY_NAME')}",
          f"- load average before the report: {sh('cat /proc/loadavg')}",
          f"- {sh('target/release/pipe --version') or 'pipe (not built)'}"
          + (f" (`pipe doctor`: {' '.join(open(doctor).read().split())[:200]})" if os.path.exists(doctor) else "")
          + f"; ONNX Runtime {onnxruntime.__version__} in Python, pipe given ORT_DYLIB_PATH="
          f"{os.environ.get('ORT_DYLIB_PATH', '(unset)')}; Python {platform.python_version()}, "
          f"numpy {numpy.__version__}, Pillow {PIL.__version__}; {sh('hyperfine --version')}",
          f"- {count} images, {threads} model threads, batch 32, model bench/{model}, hyperfine --warmup {warmup} "
          f"--runs {runs}" + ("; every program pinned with taskset to the first threads cores" if pin == "1" else
                               "; not pinned (pipe's decoding may use every core)")]
report = "\n".join(lines) + "\n"
open(os.path.join(out, "results.md"), "w").write(report)
print(report)