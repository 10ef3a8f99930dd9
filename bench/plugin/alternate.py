"""Times the plugin benchmark's pipelines in turn, round after round, so that two pipe binaries
meet the same load (bench/plugin.sh times each command's runs one after the other):

    python3 bench/plugin/alternate.py --before /tmp/pipe-before --after target/release/pipe --rounds 8

Run from the repository root after bench/plugin.sh has made the rows; python3 must be the one
with pyarrow (.pipe/venv/bin), and PYTHONPATH=plugins/python for this checkout's SDK. Prints a
Markdown table: median and least wall time, median CPU time (pipe and the plugin together)."""

import argparse
import os
import statistics
import subprocess
import time

ap = argparse.ArgumentParser()
ap.add_argument("--before", required=True, help="the pipe binary before the change")
ap.add_argument("--after", required=True, help="the pipe binary after it")
ap.add_argument("--rounds", type=int, default=8)
a = ap.parse_args()
commands = [
    ("base", f"{a.after} run bench/plugin/base.toml --quiet"),
    ("plugin, before", f"{a.before} run bench/plugin/plugin.toml --quiet"),
    ("plugin, after", f"{a.after} run bench/plugin/plugin.toml --quiet"),
]
times = {name: [] for name, _ in commands}
for _ in range(a.rounds):
    for name, cmd in commands:
        t0, c0 = time.perf_counter(), os.times()
        subprocess.run(cmd.split(), check=True)
        c1 = os.times()
        cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        times[name].append((time.perf_counter() - t0, cpu))
print(f"| command | wall median (s) | wall min (s) | CPU median (s) |  ({a.rounds} rounds)")
print("|---|---:|---:|---:|")
for name, runs in times.items():
    walls = [w for w, _ in runs]
    print(f"| {name} | {statistics.median(walls):.3f} | {min(walls):.3f} | {statistics.median(c for _, c in runs):.3f} |")
