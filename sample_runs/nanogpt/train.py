"""Train the small character-level nanoGPT checkpoint of sample_runs/nanogpt on a CPU.

Writes ckpt.pt (nanoGPT's layout, with its character vocabulary under "meta"), train.log in
EOLE's Step-line format and a TensorBoard event file, all beside this script.

Run from the repository root: .venv/bin/python sample_runs/nanogpt/train.py
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from attn_entropy_cli.capture import capture_attention
from attn_entropy_cli.loaders.gpt import GPT, GPTConfig
from attn_entropy_cli.loaders.nanogpt import NanoGPTAdapter

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
STEPS = 3000  # about two minutes on two CPU cores
BATCH = 16  # sequences per step
BLOCK = 64  # characters per sequence
REPORT_EVERY = 50
VALID_EVERY = 500
LR = 3e-3


def corpus() -> tuple[str, str]:
    """Training text (the first 40 pairs) and validation text (the last 10)."""
    src = (DATA / "src-val.txt").read_text(encoding="utf-8").splitlines()
    tgt = (DATA / "tgt-val.txt").read_text(encoding="utf-8").splitlines()
    train = "\n".join(src[:40] + tgt[:40]) + "\n"
    valid = "\n".join(src[40:] + tgt[40:]) + "\n"
    return train, valid


def sample(data: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (inputs, next characters), each (BATCH, BLOCK)."""
    starts = torch.randint(len(data) - BLOCK - 1, (BATCH,), generator=generator)
    x = torch.stack([data[i : i + BLOCK] for i in starts])
    y = torch.stack([data[i + 1 : i + BLOCK + 1] for i in starts])
    return x, y


def attention_entropy(model: GPT, x: torch.Tensor) -> float:
    """Mean entropy over every layer and head of a batch, observed by attnent's capture."""
    adapter = NanoGPTAdapter(path=HERE, model=model, attn_types=("self",))
    masks = {"src": torch.ones_like(x, dtype=torch.bool)}
    with capture_attention(model, adapter.sites()) as capture:
        capture.run(lambda: model(x), masks)
    means = [sums.mean().mean().item() for sums in capture.sums.values()]
    return sum(means) / len(means)


def evaluate(model: GPT, data: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy %) over the validation text, in eval mode."""
    model.eval()
    with torch.no_grad():
        starts = range(0, len(data) - BLOCK - 1, BLOCK)
        x = torch.stack([data[i : i + BLOCK] for i in starts])
        y = torch.stack([data[i + 1 : i + BLOCK + 1] for i in starts])
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)).item()
        accuracy = (logits.argmax(-1) == y).float().mean().item() * 100
    model.train()
    return loss, accuracy


def main() -> None:
    torch.manual_seed(1234)
    generator = torch.Generator().manual_seed(1234)
    logging.basicConfig(
        filename=HERE / "train.log",
        filemode="w",
        format="[%(asctime)s %(levelname)s] %(message)s",
        level=logging.INFO,
    )
    log = logging.getLogger("train")
    train_text, valid_text = corpus()
    chars = sorted(set(train_text + valid_text))
    stoi = {c: i for i, c in enumerate(chars)}
    train = torch.tensor([stoi[c] for c in train_text])
    valid = torch.tensor([stoi[c] for c in valid_text])

    model_args = dict(
        n_layer=2,
        n_head=4,
        n_embd=64,
        block_size=256,
        bias=True,
        vocab_size=len(chars),
        dropout=0.0,
    )
    model = GPT(GPTConfig(**model_args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    writer = SummaryWriter(str(HERE / "tensorboard"))
    log.info(
        "Training a nanoGPT of %d parameters for %d steps",
        sum(p.numel() for p in model.parameters()),
        STEPS,
    )

    begin = time.time()
    for step in range(1, STEPS + 1):
        lr = LR * 0.5 * (1 + math.cos(math.pi * (step - 1) / STEPS))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = sample(train, generator)
        logits, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        if step % REPORT_EVERY == 0:
            accuracy = (logits.argmax(-1) == y).float().mean().item() * 100
            entropy = attention_entropy(model, x)
            model.train()
            xent = loss.item()
            elapsed = time.time() - begin
            rate = BATCH * BLOCK * step / elapsed
            log.info(
                f"Step {step:>4d}/{STEPS:>4d}; acc: {accuracy:4.1f}; ppl: {math.exp(xent):5.2f}; "
                f"xent: {xent:4.2f}; aux: 0.000; mtp: 0.000; attn_ent: {entropy:.3f}; "
                f"lr: {lr:.2e}; sents: {BATCH * REPORT_EVERY:>7d}; "
                f"bsz: {BLOCK:>4d}/{BLOCK:>4d}/{BATCH}; {rate:4.0f}/{rate:4.0f} tok/s; "
                f"{elapsed:>6.0f} sec;"
            )
            for name, value in [
                ("xent", xent),
                ("ppl", math.exp(xent)),
                ("accuracy", accuracy),
                ("attention_entropy", entropy),
                ("lr", lr),
            ]:
                writer.add_scalar(f"progress/{name}", value, step)

        if step % VALID_EVERY == 0:
            xent, accuracy = evaluate(model, valid)
            log.info(f"Validation perplexity: {math.exp(xent):.2f}")
            log.info(f"Validation accuracy: {accuracy:.2f}")
            for name, value in [("xent", xent), ("ppl", math.exp(xent)), ("accuracy", accuracy)]:
                writer.add_scalar(f"valid/{name}", value, step)

    writer.close()
    checkpoint = {
        "model": model.state_dict(),
        "model_args": model_args,
        "iter_num": STEPS,
        "best_val_loss": torch.tensor(xent),
        "config": {"batch_size": BATCH, "block_size": BLOCK, "learning_rate": LR},
        "meta": {"vocab_size": len(chars), "stoi": stoi, "itos": dict(enumerate(chars))},
    }
    torch.save(checkpoint, HERE / "ckpt.pt")
    log.info("Saved ckpt.pt")


if __name__ == "__main__":
    main()
