"""Benchmark: `attnent compare` of 50 runs of 100k steps, first read and cached read.

Input, generated deterministically under --data (default /tmp/attnent-bench/many): 50 run
folders, each with an EOLE-like event file of 100k steps (six `progress/*` scalars per step,
seven `valid/*` every 1,000 steps; 33 MB, 600k scalars; seed = run number) and an EOLE 0.6.4
console log with a `Step` line every 100 steps and a validation block every 1,000 (0.2 MB):
1.7 GB and 30M rows in all.

Measured, each as its own `attnent compare RUN...` process with the cache in a folder of its
own (`ATTNENT_CACHE_DIR`): the first compare (cache emptied before: every file is read, by two
worker processes) and the second (every table from the cache). CPU s and peak RSS are the
compare process's own: the reading workers are forked by multiprocessing's fork server, not by
the compare process, so their time and memory are not in the rusage this script reads. The
target is the second's wall time. Last, the cached read alone (`read_runs`, in a fresh process,
imports excluded): the part of the second compare that grows with the data read.

Usage: python benchmarks/compare_many.py [--runs 50] [--steps 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from read_events import platform_line, write_eole_events  # noqa: E402
from read_logs import step_lines  # noqa: E402


def write_run(folder: Path, steps: int, seed: int) -> None:
    """One run folder: a log with a Step line every 100 steps and an event file."""
    events = folder / "tensorboard" / "events.out.tfevents.1700000000.bench.0.0"
    if events.exists():
        return
    rng = random.Random(seed)
    events.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for step in range(100, steps + 1, 100) for line in step_lines(step, steps, rng)]
    (folder / "train.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_eole_events(events, steps, seed)


def timed(command: list[str], env: dict) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one command, from its own rusage."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def cached_read(folders: list[Path], env: dict) -> float:
    """Wall seconds of reading every run's table from the cache, in a fresh process."""
    code = (
        "import sys, time; from pathlib import Path; import warnings; "
        "from attn_entropy_cli.runs import read_runs; "
        "warnings.simplefilter('ignore'); start = time.perf_counter(); "
        "read_runs([Path(p) for p in sys.argv[1:]]); print(time.perf_counter() - start)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, folders)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout)


def main() -> None:
    """Generate the runs, time a first and a cached compare, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/attnent-bench/many"))
    args = parser.parse_args()

    folders = [args.data / f"run{i:02d}" for i in range(args.runs)]
    for i, folder in enumerate(folders):
        write_run(folder, args.steps, seed=i)
    size = sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
    cache = args.data.parent / "many-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, ATTNENT_CACHE_DIR=str(cache))
    command = [sys.executable, "-m", "attn_entropy_cli", "compare", *map(str, folders)]

    print(f"machine: {os.cpu_count()} CPUs, {platform_line()}")
    print("| runs | data GB | compare | wall s | CPU s (compare process) | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for label in ("first (empty cache)", "second (cached)"):
        wall, cpu, rss = timed(command, env)
        print(
            f"| {args.runs} | {size / 1e9:.2f} | {label} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |",
            flush=True,
        )
    seconds = cached_read(folders, env)
    print(
        f"cached read alone (`read_runs` of the {args.runs} runs, imports excluded): "
        f"{seconds:.2f} s wall, {seconds / (size / 1e9):.2f} s per GB read the first time"
    )


if __name__ == "__main__":
    main()
