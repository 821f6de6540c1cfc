"""nanoGPT checkpoints: `ckpt.pt` with `model_args` and `model`, and a character vocabulary."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attn_entropy_cli.capture.sites import AttentionSite
from attn_entropy_cli.errors import InputError, UsageError
from attn_entropy_cli.loaders.base import (
    Batch,
    CheckpointAdapter,
    Example,
    LoadOptions,
    Tokens,
    load_torch_file,
    pad_side,
    place_model,
)
from attn_entropy_cli.loaders.gpt import GPT, GPTConfig

CHECKPOINT_NAME = "ckpt.pt"
META_NAME = "meta.pkl"
COMPILE_PREFIX = "_orig_mod."  # what torch.compile puts before every key
VOCABULARY_HINT = "Put nanoGPT's meta.pkl beside it, or pass --tokenizer HF_TOKENIZER_FOLDER"


def checkpoint_file(path: Path) -> Path:
    """The `.pt` file of a checkpoint named by file or by its out_dir folder."""
    return path / CHECKPOINT_NAME if path.is_dir() else path


class DataOnlyUnpickler(pickle.Unpickler):
    """Reads plain data (dicts, lists, strings, numbers) and refuses anything that is code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def read_meta(path: Path) -> dict:
    """nanoGPT's `meta.pkl` (`stoi`, `itos`), read without running code."""
    try:
        with open(path, "rb") as handle:
            meta = DataOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise InputError(
            f"{path} is not a plain-data vocabulary ({error}). "
            "Write it again as a dict with 'stoi' and 'itos'"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("stoi"), dict):
        raise InputError(f"{path} holds no 'stoi' dict. {VOCABULARY_HINT}")
    return meta


class HFTokenizer:
    """A Hugging Face tokenizer folder used as `text -> ids`."""

    def __init__(self, folder: Path):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UsageError(
                "--tokenizer needs transformers. Run 'pip install attnent[hf]'"
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as error:
            raise UsageError(
                f"cannot load a tokenizer from {folder} ({error}). "
                "Give --tokenizer a Hugging Face tokenizer folder"
            ) from None

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class NanoGPTAdapter(CheckpointAdapter):
    """A nanoGPT `ckpt.pt`, run through the package's own GPT."""

    format_name = "nanogpt"
    description = "nanoGPT ckpt.pt"

    @classmethod
    def detect(cls, path: Path) -> bool:
        """True for a torch file (or out_dir) whose dict holds `model_args` and `model`."""
        file = checkpoint_file(Path(path))
        if not file.is_file() or not zipfile.is_zipfile(file):
            return False
        try:
            content = load_torch_file(file, mmap=True)
        except InputError:
            return False
        return isinstance(content, dict) and "model_args" in content and "model" in content

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> NanoGPTAdapter:
        """Build the GPT from `model_args`, load `model` strictly, find the vocabulary."""
        file = checkpoint_file(Path(path))
        content = load_torch_file(file, options.unsafe_load_pickle)
        if not isinstance(content, dict) or "model_args" not in content:
            raise InputError(
                f"{file} has no 'model_args', so it is not a nanoGPT checkpoint. "
                "Pass another --format-hint"
            )
        config = GPTConfig.from_model_args(dict(content["model_args"]))
        if config.n_embd % config.n_head != 0:
            raise InputError(
                f"{file} has n_embd {config.n_embd} that n_head {config.n_head} does not "
                "divide. Check its model_args"
            )
        model = GPT(config)
        load_state(model, content.get("model", {}), file)
        tokenize, itos_size = vocabulary(file, content, options)
        step = content.get("iter_num")
        return cls(
            path=Path(path),
            model=place_model(model, options),
            attn_types=("self",),
            step=int(step) if step is not None else None,
            max_positions=config.block_size,
            vocab_size=config.vocab_size,
            extras={"tokenize": tokenize, "vocabulary_size": itos_size},
        )

    def sites(self) -> list[AttentionSite]:
        """One causal self-attention per block."""
        blocks = self.model.transformer.h
        return [
            AttentionSite(block.attn, f"transformer.h.{i}.attn", "self", i, "src")
            for i, block in enumerate(blocks)
        ]

    def encode(self, example: Example, max_length: int | None) -> tuple[Tokens, bool]:
        """Character (or tokenizer) ids of the text, cut to max_length."""
        tokenize = self.extras["tokenize"]
        try:
            ids = tokenize(example.src)
        except KeyError as error:
            raise InputError(
                f"line {example.line + 1} of the data has {error.args[0]!r}, which is not in "
                f"the vocabulary of {self.path}. Remove it, or pass --tokenizer"
            ) from None
        cut = max_length is not None and len(ids) > max_length
        return {"src": ids[:max_length] if cut else ids}, cut

    def collate(self, items: Sequence[Tokens]) -> Batch:
        """Right-pad with id 0: causal rows never see the padding after them."""
        ids, mask = pad_side([item["src"] for item in items], pad=0, left=False)
        return Batch({"idx": ids}, {"src": mask}, len(items))


def load_state(model: GPT, state: dict, file: Path) -> None:
    """Load a nanoGPT state dict with strict key matching, after nanoGPT's own key fixes."""
    state = {k.removeprefix(COMPILE_PREFIX): v for k, v in state.items()}
    # older nanoGPT saves the causal-mask buffer `attn.bias` when flash attention is absent
    state = {k: v for k, v in state.items() if not (k.endswith(".attn.bias") and v.dim() == 4)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = str(error).splitlines()
        detail = " ".join(line.strip() for line in lines[1:3])[:300]
        raise InputError(
            f"the weights in {file} do not match its model_args ({detail}). "
            "Check that the file is a nanoGPT checkpoint, or use --factory"
        ) from None


def vocabulary(file: Path, content: dict, options: LoadOptions):
    """The `text -> ids` function: --tokenizer, else a stored or `meta.pkl` character map."""
    if options.tokenizer is not None:
        tokenizer = HFTokenizer(options.tokenizer)
        return tokenizer, len(tokenizer.tokenizer)
    meta = content.get("meta") if isinstance(content.get("meta"), dict) else content
    if not isinstance(meta.get("stoi"), dict):
        beside = file.parent / META_NAME
        if not beside.is_file():
            raise InputError(f"{file} has no character vocabulary. {VOCABULARY_HINT}")
        meta = read_meta(beside)
    stoi = dict(meta["stoi"])

    def tokenize(text: str) -> list[int]:
        return [stoi[char] for char in text]

    return tokenize, len(stoi)
