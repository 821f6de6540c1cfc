"""Benchmark: reading an EOLE console log with 1M `Step` lines.

Input, generated deterministically under --data (default /tmp/attnent-bench): the start-up
lines of `sample_runs/runA/train.log` (configuration and printed model tree), then one EOLE
0.6.4 `Step` line per step (`acc, ppl, xent, aux, mtp, attn_ent, lr, sents, bsz, tok/s, sec`)
and a validation block every 1,000 steps: 1M steps, about 197 MB.

Readers, each in a fresh process, timed around the read; every reader runs --repeat times
(interleaved) and its fastest run is shown, as load from other programs only ever slows a run:
- attnent: `attn_entropy_cli.runs.fastlogs.read_log_columns`, the bulk reader behind
  `read_runs` (rows as columns: the same rows as the generic reader, bit for bit);
- naive: a per-line regex loop into dicts, the way a script would read such a log;
- generic: attnent's generic reader `logs.parse_lines` (with --generic).

Usage: python benchmarks/read_logs.py [--steps 1000000] [--repeat 3] [--generic]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from read_events import cpu_seconds, peak_rss_mb, platform_line  # noqa: E402

VALIDATION = (
    "Train perplexity: {tp:.3f}\nTrain accuracy: {ta:.4f}\nSentences processed: {sp}\n"
    "{{'corpus_1': {sp}}}\nAverage bsz:  743/ 743/32\nValidation perplexity: {vp:.4f}\n"
    "Validation accuracy: {va:.4f}"
)


def step_line(step: int, total: int, rng: random.Random) -> str:
    """An EOLE 0.6.4 `Step` line."""
    return (
        f"Step {step}/{total:>6}; acc: {rng.uniform(0, 99):.1f}; ppl: {rng.uniform(1, 900):.2f}; "
        f"xent: {rng.uniform(0, 7):.2f}; aux: 0.000; mtp: 0.000; "
        f"attn_ent: {rng.uniform(0, 4):.3f}; lr: {rng.uniform(0, 0.03):.2e}; "
        f"sents: {rng.randint(100, 400):>8}; bsz: {rng.randint(500, 999):>4}/"
        f"{rng.randint(500, 999):>4}/32; {rng.randint(100, 20000)}/{rng.randint(100, 20000)} "
        f"tok/s; {step // 4:>8} sec;"
    )


def step_lines(step: int, steps: int, rng: random.Random) -> list[str]:
    """The log lines of one step: its Step line, and a validation block every 1,000 steps."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_796_315_000 + step // 4))
    prefix = f"[{stamp},{step % 1000:03d} INFO] "
    lines = [prefix + step_line(step, steps, rng)]
    if step % 1000 == 0:
        block = VALIDATION.format(
            tp=rng.uniform(1, 900),
            ta=rng.uniform(0, 99),
            sp=rng.randint(1, 9999),
            vp=rng.uniform(1, 900),
            va=rng.uniform(0, 99),
        )
        lines.extend(prefix + part for part in block.splitlines())
    return lines


def write_eole_log(path: Path, steps: int, seed: int = 0) -> None:
    """An EOLE-like console log of `steps` Step lines (see the module docstring)."""
    rng = random.Random(seed)
    head = (ROOT / "sample_runs" / "runA" / "train.log").read_text().splitlines()
    head = [line for line in head if "Step " not in line][:100]
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("\n".join(head) + "\n")
        for first in range(1, steps + 1, 10_000):
            lines = []
            for step in range(first, min(first + 10_000, steps + 1)):
                lines += step_lines(step, steps, rng)
            handle.write("\n".join(lines) + "\n")
    tmp.replace(path)


def log_file(data: Path, steps: int) -> Path:
    """The generated log of `steps` steps, written on first use."""
    path = data / f"eole_log_{steps}" / "train.log"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_eole_log(path, steps)
    return path


NAIVE_LINE = re.compile(r"^\[(\S+ \S+?),(\d+) \w+\] Step (\d+)/\s*\d+;(.*)$")
NAIVE_PAIR = re.compile(r"(\w+): ([-\d.e+]+)")


def read_naive(path: Path) -> int:
    """A per-line regex loop into dicts: the baseline."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = NAIVE_LINE.match(line)
            if match:
                record = {"step": int(match.group(3)), "time": match.group(1)}
                for key, value in NAIVE_PAIR.findall(match.group(4)):
                    record[key] = float(value)
                records.append(record)
    return sum(len(r) - 2 for r in records)


def read_attnent(path: Path) -> int:
    """Rows read by attnent's bulk log reader."""
    from attn_entropy_cli.runs import fastlogs

    return len(fastlogs.read_log_columns(path).step)


def read_generic(path: Path) -> int:
    """Rows read by attnent's generic line parser."""
    from attn_entropy_cli.runs import logs

    with logs.open_text(path) as handle:
        rows, _ = logs.parse_lines(handle)
    return len(rows)


def measure(reader: str, path: Path) -> dict:
    """CPU, wall time, peak RSS and row count of one reader on one file, in this process."""
    import pandas  # noqa: F401

    from attn_entropy_cli.runs import fastlogs, logs  # noqa: F401

    read = {"attnent": read_attnent, "naive": read_naive, "generic": read_generic}[reader]
    cpu, wall = cpu_seconds(), time.perf_counter()
    rows = read(path)
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "rss_mb": peak_rss_mb(), "rows": rows}


def main() -> None:
    """Generate the log, measure each reader and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/attnent-bench"))
    parser.add_argument("--generic", action="store_true", help="Also time the generic reader.")
    parser.add_argument(
        "--repeat", type=int, default=3, help="Runs of each reader (fastest shown)."
    )
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return

    path = log_file(args.data, args.steps)
    size = path.stat().st_size / 1e6
    readers = ["attnent", "naive"] + (["generic"] if args.generic else [])
    print(f"machine: {platform_line()}")
    print(f"fastest of {args.repeat} runs of each reader, each run in a fresh process")
    print("| log MB | reader | rows | CPU s | wall s | MB/s (CPU) | peak RSS MB | vs naive |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for _ in range(args.repeat):
        for reader in readers:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", reader, str(path)],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if reader not in results or result["cpu"] < results[reader]["cpu"]:
                results[reader] = result
    for reader, r in results.items():
        print(
            f"| {size:.0f} | {reader} | {r['rows']:,} | {r['cpu']:.2f} | {r['wall']:.2f} | "
            f"{size / r['cpu']:.0f} | {r['rss_mb']:.0f} | "
            f"{results['naive']['cpu'] / r['cpu']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
