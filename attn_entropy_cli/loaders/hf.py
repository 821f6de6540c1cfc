"""Hugging Face model folders (`config.json` with `model_type`), through transformers' SDPA."""

from __future__ import annotations

import json
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
    check_dtype,
    named_step,
    pad_side,
)
from attn_entropy_cli.loaders.discover import discover_sites

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_target_positions")


def read_config(path: Path) -> dict | None:
    """The folder's `config.json` as a dict, or None when there is none or it is not JSON."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def checkpoint_step(path: Path) -> int | None:
    """The step of a folder: `trainer_state.json`'s global_step, or `checkpoint-N`."""
    state = Path(path) / "trainer_state.json"
    if state.is_file():
        try:
            step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
        except (OSError, json.JSONDecodeError, AttributeError):
            step = None
        if isinstance(step, int):
            return step
    return named_step(Path(path).resolve())


@dataclass
class HFAdapter(CheckpointAdapter):
    """A transformers model loaded with `attn_implementation="sdpa"` and its tokenizer."""

    format_name = "hf"
    description = "Hugging Face model folder"

    @classmethod
    def detect(cls, path: Path) -> bool:
        """True for a folder whose `config.json` names a `model_type`."""
        config = read_config(path) if Path(path).is_dir() else None
        return config is not None and "model_type" in config

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> HFAdapter:
        """The base model (no task head) with SDPA attention, and the folder's tokenizer.

        Limitations: passes `dtype=`, which transformers takes since 4.56; older releases
        want `torch_dtype=` and would load float32 whatever --dtype says.
        """
        dtype = check_dtype(options.dtype)
        try:
            import transformers
        except ImportError:
            raise UsageError(
                f"{path} is a Hugging Face model and reading it needs transformers. "
                "Run 'pip install attnent[hf]'"
            ) from None
        # transformers' loading bars would clutter attnent's stderr; restored below
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            model = transformers.AutoModel.from_pretrained(
                str(path), attn_implementation="sdpa", dtype=dtype
            )
        except (OSError, ValueError, KeyError) as error:
            raise InputError(
                f"transformers cannot load {path} with SDPA attention ({error}). "
                "Use --factory module:function for this model"
            ) from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        tokenizer_path = options.tokenizer or path
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_path))
        except (OSError, ValueError, KeyError) as error:
            raise InputError(
                f"no tokenizer could be loaded from {tokenizer_path} ({error}). "
                "Pass --tokenizer HF_TOKENIZER_FOLDER"
            ) from None
        return cls.from_model(
            model.to(options.device), tokenizer, Path(path), checkpoint_step(path)
        )

    @classmethod
    def from_model(cls, model, tokenizer, path: Path, step: int | None = None) -> HFAdapter:
        """Wrap a loaded transformers model and tokenizer (tests build tiny ones this way)."""
        config = model.config
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        if encoder_decoder:
            types, sides = ("enc_self", "self", "context"), ("src", "tgt")
        else:
            types, sides = ("self",), ("src",)
        positions = [getattr(config, key, None) for key in POSITION_KEYS]
        positions = [p for p in positions if isinstance(p, int) and p > 0]
        return cls(
            path=path,
            model=model.eval(),
            attn_types=types,
            sides=sides,
            step=step,
            max_positions=min(positions) if positions else None,
            vocab_size=model.get_input_embeddings().num_embeddings,
            extras={"tokenizer": tokenizer, "encoder_decoder": encoder_decoder},
        )

    def sites(self) -> list[AttentionSite]:
        """The innermost `...Attention` modules, typed by their names."""
        sites = discover_sites(self.model, self.extras["encoder_decoder"])
        order = {t: i for i, t in enumerate(self.attn_types)}
        return sorted(sites, key=lambda s: (order.get(s.attn_type, 99), s.layer))

    def encode(self, example: Example, max_length: int | None) -> tuple[Tokens, bool]:
        """Tokenise with the model's special tokens; targets become teacher-forced inputs."""
        tokenizer = self.extras["tokenizer"]
        src, cut = self.tokenize(example.src, max_length, text_target=False)
        if not self.extras["encoder_decoder"]:
            return {"src": src}, cut
        if example.tgt is None:
            raise UsageError(
                f"{self.path} is an encoder-decoder model and needs a target side. "
                "Pass --tgt FILE or --tsv"
            )
        labels, cut_tgt = self.tokenize(example.tgt, max_length, text_target=True)
        start = self.model.config.decoder_start_token_id
        start = tokenizer.pad_token_id if start is None else start
        return {"src": src, "tgt": [start, *labels[:-1]]}, cut or cut_tgt

    def tokenize(self, text: str, max_length: int | None, text_target: bool):
        """Token ids of one text and whether they were cut to max_length."""
        tokenizer = self.extras["tokenizer"]
        key = "text_target" if text_target else "text"
        ids = tokenizer(**{key: text})["input_ids"]
        if max_length is None or len(ids) <= max_length:
            return ids, False
        ids = tokenizer(**{key: text}, truncation=True, max_length=max_length)["input_ids"]
        return ids, True

    def collate(self, items: Sequence[Tokens]) -> Batch:
        """Pad on the tokenizer's padding side, with attention masks for every side."""
        tokenizer = self.extras["tokenizer"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        left = getattr(tokenizer, "padding_side", "right") == "left"
        ids, masks = {}, {}
        for side in self.sides:
            ids[side], masks[side] = pad_side([item[side] for item in items], pad, left)
        inputs = {"input_ids": ids["src"], "attention_mask": masks["src"].long()}
        if self.extras["encoder_decoder"]:
            inputs["decoder_input_ids"] = ids["tgt"]
            inputs["decoder_attention_mask"] = masks["tgt"].long()
        inputs["use_cache"] = False
        return Batch(inputs, masks, len(items))
