"""Time and memory of three ways to get attention entropy from a tiny GPT-2, per length.

Each (way, length) runs in its own process: a fresh interpreter builds the model (6 layers,
8 heads, width 256, 4,096 positions, random weights), runs a warm-up forward, resets the
peak-RSS counter, then times the forward on one sequence of T tokens. Peak RSS is read from
/proc (VmHWM after `clear_refs`), so it is the peak above the loaded model.

The model is GPT2Model, without the 50,257-word LM head, as `attnent compute` itself loads
Hugging Face models; `--lm-head` runs GPT2LMHeadModel in all three ways instead.

Ways: `plain` is the SDPA forward alone; `eager` is eager attention with
`output_attentions=True` plus entropy from the weights; `attnent` is `attnent compute`'s
path (SDPA forward observed by attn_entropy_cli.capture).

Run: .venv/bin/python benchmarks/compute_memory.py [--lengths 1024 2048 4096] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WAYS = ("plain", "eager", "attnent")


def rss_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(way: str, length: int, repeat: int, lm_head: bool) -> dict:
    """Build the model, run one way at one length, return time and peak extra memory."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    from attn_entropy_cli.capture import capture_attention
    from attn_entropy_cli.loaders.hf import HFAdapter

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=6, n_head=8, n_embd=256, n_positions=4096)
    implementation = "eager" if way == "eager" else "sdpa"
    model_class = transformers.GPT2LMHeadModel if lm_head else transformers.GPT2Model
    model = model_class(config).eval()
    model.set_attn_implementation(implementation)
    sites = HFAdapter.from_model(model, None, Path("gpt2")).sites()

    def forward(ids):
        mask = torch.ones_like(ids)
        if way == "plain":
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, use_cache=False)
        elif way == "eager":
            with torch.inference_mode():
                out = model(
                    input_ids=ids, attention_mask=mask, use_cache=False, output_attentions=True
                )
                for weights in out.attentions:  # (batch, heads, q, k)
                    (-torch.special.xlogy(weights, weights).sum(-1)).mean(dim=(0, 2))
        else:
            with capture_attention(model, sites) as capture:
                capture.run(
                    lambda: model(input_ids=ids, attention_mask=mask, use_cache=False),
                    {"src": mask.bool()},
                )

    forward(torch.randint(0, 50257, (1, 256)))  # warm-up
    ids = torch.randint(0, 50257, (1, length))
    exact_peak = reset_peak()
    base = rss_kib("VmRSS")
    times = []
    # eager at T=4096 takes tens of seconds and its spread matters little next to its size
    for _ in range(min(repeat, 2) if way == "eager" else repeat):
        begin = time.perf_counter()
        forward(ids)
        times.append(time.perf_counter() - begin)
    peak = rss_kib("VmHWM")
    return {
        "way": way,
        "T": length,
        "seconds": min(times),
        "extra_mib": (peak - base) / 1024,
        "exact_peak": exact_peak,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeat", type=int, default=5, help="timed forwards; the fastest counts")
    parser.add_argument(
        "--lm-head",
        action="store_true",
        help="all three ways run GPT2LMHeadModel (50,257-word head) instead of GPT2Model",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeat, args.lm_head)))
        return

    results = {}
    for length in args.lengths:
        for way in WAYS:
            command = [
                sys.executable,
                __file__,
                "--child",
                way,
                str(length),
                "--repeat",
                str(args.repeat),
            ] + (["--lm-head"] if args.lm_head else [])
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[way, length] = json.loads(done.stdout.strip().splitlines()[-1])
            row = results[way, length]
            print(
                f"  {way:>7} T={length:>5}: {row['seconds']:7.3f} s, {row['extra_mib']:8.1f} MiB",
                file=sys.stderr,
            )

    print(
        "| T | plain s | eager s | attnent s | attnent/plain time | plain MiB | eager MiB "
        "| attnent MiB | attnent/plain memory |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for length in args.lengths:
        plain, eager, ours = (results[way, length] for way in WAYS)
        print(
            f"| {length} | {plain['seconds']:.3f} | {eager['seconds']:.3f} | "
            f"{ours['seconds']:.3f} | {ours['seconds'] / plain['seconds']:.2f}x | "
            f"{plain['extra_mib']:.0f} | {eager['extra_mib']:.0f} | {ours['extra_mib']:.0f} | "
            f"{ours['extra_mib'] / max(plain['extra_mib'], 1e-9):.2f}x |"
        )
    exact = all(row["exact_peak"] for row in results.values())
    threads = results[WAYS[0], args.lengths[0]]["threads"]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"\nfastest of {args.repeat} forwards (eager: of at most 2); peak RSS above the loaded "
        f"model ({'after a VmHWM reset' if exact else 'lifetime VmHWM: no reset allowed'}); "
        f"torch threads: {threads}; load average at the end: {load}"
    )


if __name__ == "__main__":
    main()
