"""Benchmark: reading the scalars of an EOLE-like TensorBoard event file.

Input, generated deterministically (seeded values, made-up wall times) under --data (default
/tmp/attnent-bench): every step writes six `progress/*` scalars (xent, ppl, accuracy,
attention_entropy, tgtper, lr) and every 1,000th step seven `valid/*` scalars, as
`SummaryWriter.add_scalar` writes them. 100k steps: about 33 MB, 600k scalars; 1M steps:
about 334 MB, 6M scalars.

Each reader runs in a fresh process (so peak RSS is its own) and is timed around the read:
- attnent: `attn_entropy_cli.runs.events.read_event_file` (the long table, CRCs checked);
- tbparse: `SummaryReader(path, extra_columns={"wall_time"}).scalars`, tbparse's default path;
- dataserver (with --dataserver): tensorboard's Rust data server (`--checksum`,
  `scalars=all`, `--reload once`) queried over gRPC until every tag reaches the last step;
  its CPU time and peak RSS are the server's plus the client's.

Usage: python benchmarks/read_events.py [--steps 100000 1000000] [--dataserver]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import crc32c
import numpy as np

PROGRESS = ("xent", "ppl", "accuracy", "attention_entropy", "tgtper", "lr")
VALID = ("xent", "ppl", "accuracy", "attention_entropy", "tgtper", "lr", "mtp_xent")
VALID_EVERY = 1000


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(number: int) -> bytes:
    """Protobuf varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def record(payload: bytes) -> bytes:
    """One TFRecord: length, its CRC, the payload, its CRC."""
    length = struct.pack("<Q", len(payload))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc(length)),
            payload,
            struct.pack("<I", masked_crc(payload)),
        )
    )


def scalar_event(tag: str, step: int, wall_time: float, value: float) -> bytes:
    """An Event proto holding one `simple_value`, serialised as protobuf does."""
    name = tag.encode()
    item = b"\x0a" + varint(len(name)) + name + b"\x15" + struct.pack("<f", value)
    summary = b"\x0a" + varint(len(item)) + item
    step_field = b"\x10" + varint(step) if step else b""
    return (
        b"\x09"
        + struct.pack("<d", wall_time)
        + step_field
        + b"\x2a"
        + varint(len(summary))
        + summary
    )


def write_eole_events(path: Path, steps: int, seed: int = 0) -> None:
    """An EOLE-like event file of `steps` steps (see the module docstring)."""
    rng = np.random.default_rng(seed)
    version = b"\x09" + struct.pack("<d", 1.7e9) + b"\x1a\x0dbrain.Event:2"
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as handle:
        handle.write(record(version))
        for first in range(1, steps + 1, 10_000):
            last = min(first + 10_000, steps + 1)
            values = rng.random((last - first, len(PROGRESS) + len(VALID))).astype(np.float32)
            chunk = []
            for i, step in enumerate(range(first, last)):
                wall = 1.7e9 + step * 0.25
                row = values[i].tolist()
                for k, name in enumerate(PROGRESS):
                    chunk.append(
                        record(scalar_event(f"progress/{name}", step, wall + k * 1e-5, row[k]))
                    )
                if step % VALID_EVERY == 0:
                    for k, name in enumerate(VALID):
                        event = scalar_event(
                            f"valid/{name}", step, wall + 0.1 + k * 1e-5, row[len(PROGRESS) + k]
                        )
                        chunk.append(record(event))
            handle.write(b"".join(chunk))
    tmp.replace(path)


def event_file(data: Path, steps: int) -> Path:
    """The generated file for `steps` steps, written on first use."""
    folder = data / f"eole_events_{steps}"
    path = folder / "events.out.tfevents.1700000000.bench.0.0"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_eole_events(path, steps)
    return path


# one reader, in this process


def cpu_seconds() -> float:
    """User plus system CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def read_attnent(path: Path) -> int:
    """Rows read by attnent's event reader."""
    from attn_entropy_cli.runs import events

    return len(events.read_event_file(path))


def read_tbparse(path: Path) -> int:
    """Rows read by tbparse's default path."""
    from tbparse import SummaryReader

    return len(SummaryReader(str(path), extra_columns={"wall_time"}).scalars)


def read_dataserver(path: Path) -> int:
    """Points read from tensorboard's Rust data server, started on a folder linking `path`."""
    import tempfile

    import grpc
    import tensorboard_data_server
    from tensorboard.data.proto import data_provider_pb2 as pb
    from tensorboard.data.proto import data_provider_pb2_grpc as pb_grpc

    with tempfile.TemporaryDirectory() as logdir:
        (Path(logdir) / "run").mkdir()
        (Path(logdir) / "run" / path.name).symlink_to(path)
        port_file = Path(logdir) / "port"
        server = subprocess.Popen(
            [
                tensorboard_data_server.server_binary(),
                "--logdir",
                logdir,
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--reload",
                "once",
                "--checksum",
                "--samples-per-plugin",
                "scalars=all",
                "--die-after-stdin",
            ],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            time.sleep(0.01)
        channel = grpc.insecure_channel(
            f"localhost:{port_file.read_text().strip()}",
            options=[("grpc.max_receive_message_length", 2**31 - 1)],
        )
        stub = pb_grpc.TensorBoardDataProviderStub(channel)
        scalars = pb.PluginFilter(plugin_name="scalars")
        last = int(path.parent.name.rsplit("_", 1)[1])
        while True:
            listing = stub.ListScalars(pb.ListScalarsRequest(plugin_filter=scalars))
            maxima = [t.metadata.max_step for r in listing.runs for t in r.tags]
            complete = len(maxima) == len(PROGRESS) + len(VALID)
            if complete and min(maxima) >= last // 1000 * 1000 and max(maxima) >= last:
                break
            time.sleep(0.05)
        request = pb.ReadScalarsRequest(
            plugin_filter=scalars, downsample=pb.Downsample(num_points=10**9)
        )
        response = stub.ReadScalars(request)
        count = 0
        for run in response.runs:
            for tag in run.tags:
                step = np.array(tag.data.step, np.int64)
                np.array(tag.data.wall_time, np.float64)
                np.array(tag.data.value, np.float64)
                count += len(step)
        channel.close()
        server.stdin.close()
        server.wait()
    return count


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus that of its largest finished child, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + child) / 1024


def measure(reader: str, path: Path) -> dict:
    """CPU, wall time, peak RSS and row count of one reader on one file, in this process."""
    import pandas  # noqa: F401  (imports are not part of the measured read)

    from attn_entropy_cli.runs import events  # noqa: F401

    read = {"attnent": read_attnent, "tbparse": read_tbparse, "dataserver": read_dataserver}
    cpu, wall = cpu_seconds(), time.perf_counter()
    rows = read[reader](path)
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "rss_mb": peak_rss_mb(), "rows": rows}


# the table


def run_one(reader: str, path: Path) -> dict:
    """`measure` in a fresh Python process."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", reader, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Generate the inputs, measure each reader and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data", type=Path, default=Path("/tmp/attnent-bench"))
    parser.add_argument("--readers", nargs="+", default=["attnent", "tbparse"])
    parser.add_argument("--dataserver", action="store_true", help="Also measure rustboard.")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return

    readers = args.readers + (["dataserver"] if args.dataserver else [])
    print(f"machine: {os.cpu_count()} CPUs, {platform_line()}")
    print(
        "| steps | file MB | reader | rows | CPU s | wall s | MB/s (CPU) | peak RSS MB "
        "| vs tbparse |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        path = event_file(args.data, steps)
        size = path.stat().st_size / 1e6
        results = {reader: run_one(reader, path) for reader in readers}
        base = results.get("tbparse", results[readers[0]])["cpu"]
        for reader, r in results.items():
            print(
                f"| {steps:,} | {size:.0f} | {reader} | {r['rows']:,} | {r['cpu']:.2f} | "
                f"{r['wall']:.2f} | {size / r['cpu']:.1f} | {r['rss_mb']:.0f} | "
                f"{base / r['cpu']:.1f}x |",
                flush=True,
            )


def platform_line() -> str:
    """The CPU model and Python version, for the table's caption."""
    import platform

    model = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
