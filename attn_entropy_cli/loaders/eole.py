"""EOLE model folders (`config.json`, `vocab.json`, `model.*.safetensors`), through `eole` itself.

What EOLE 0.6.4 does, and what this adapter relies on:

- Loading: `eole.config.run.PredictConfig` reads the folder's `config.json` (model config,
  inference transforms), `eole.models.model.get_model_class` picks the model class and
  `BaseModel.for_inference` builds it, loads the safetensors and its vocabularies
  (`eole.inputters.inputter.dict_to_vocabs` on `vocab.json`), sets eval mode and dropout 0.
- Tokenisation: the transforms the checkpoint names (`eole.transforms.make_transforms`, train-only
  ones filtered out as `PredictConfig` does), then `eole.inputters.text_utils.Numericalizer` as
  in validation: an encoder-decoder source gets no specials and its target becomes
  `<s> ... </s>`; a decoder-only text becomes `<s> ...`.
- Forward (`models/model.py`): `EncoderDecoderModel.forward(src, tgt, src_len)` runs the decoder
  teacher-forced on `tgt[:, :-1]`; `DecoderModel.forward(src, _, src_len)` runs on `src`.
- Attention (`modules/multi_headed_attn.py:MultiHeadedAttention._compute_attention`): on the
  CPU, or whenever `return_attn=True`, it is computed by hand (float32 softmax over a boolean
  mask filled with finfo.min) and the per-head probabilities (batch, heads, q, k) are returned;
  on a GPU without `return_attn` it calls SDPA and returns None. The weights hook here asks for
  them on every device, so the hand-written path runs everywhere and the numbers do not depend
  on the device.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.nn.utils.rnn import pad_sequence

from attn_entropy_cli.capture.sites import AttentionSite
from attn_entropy_cli.errors import InputError, UsageError
from attn_entropy_cli.loaders.base import (
    Batch,
    CheckpointAdapter,
    Example,
    LoadOptions,
    check_dtype,
    named_step,
)

INSTALL_HINT = "pip install 'attnent[eole]'"
WEIGHTS_GLOB = "model.*.safetensors"
# EOLE model classes attnent can run on text, by class name
TEXT_MODELS = ("EncoderDecoderModel", "DecoderModel", "EncoderModel")


class EoleAttentionWeights:
    """Per-head probabilities of EOLE's `SelfMHA` / `ContextMHA`, on any device.

    The call is made with `return_attn=True`, which makes EOLE compute attention by hand (as it
    always does on the CPU); the caller gets back what it would have got: the weights on the
    CPU or when it asked, None on other devices.
    """

    def __init__(self) -> None:
        self.asked: list[bool] = []  # return_attn of the running calls

    def request(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Ask for the weights, remembering whether the caller did."""
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        self.asked.append(bool(bound.arguments.get("return_attn", False)))
        bound.arguments["return_attn"] = True
        return bound.args, bound.kwargs

    def extract(
        self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """Split (output, probs) into probs, the key mask and what the caller expected."""
        asked = self.asked.pop()
        attn_output, probs = output  # probs: (batch, heads, q, k)
        if probs is None:
            raise InputError(
                f"EOLE's {type(module).__name__} returned no attention weights although asked "
                "(a KV-cache or flash path). Run compute without generation state"
            )
        mask = inspect.signature(module.forward).bind(*args, **kwargs).arguments.get("attn_mask")
        key_mask = None if mask is None else mask[..., : probs.shape[-1]].bool()
        returned = probs if asked or probs.device.type == "cpu" else None
        return probs, key_mask, (attn_output, returned)


@dataclass
class EoleAdapter(CheckpointAdapter):
    """An EOLE encoder-decoder (`transformer`), decoder-only (`transformer_lm`) or encoder-only
    (`transformer_encoder`) checkpoint.

    Limitations: batches are right-padded (a config's `left_pad` is not followed); a decoder-only
    model reads the source text only, a target given with it is not used; the sample runs have
    no subword transforms, so tokenisation through sentencepiece or BPE transforms is untested.
    """

    format_name: ClassVar[str] = "eole"
    description: ClassVar[str] = "EOLE model folder"

    vocabs: dict = field(default_factory=dict, repr=False)  # EOLE's vocabs (pyonmttok)
    transform: Any = field(default=None, repr=False)  # EOLE's TransformPipe of the checkpoint
    numericalizer: Any = field(default=None, repr=False)  # eole Numericalizer (VALID task)
    config: dict = field(default_factory=dict, repr=False)  # the parsed config.json

    @classmethod
    def detect(cls, path: Path) -> bool:
        """A folder whose config.json has EOLE's `model` section (not Hugging Face's model_type)."""
        config = Path(path) / "config.json"
        if not config.is_file():
            return False
        try:
            document = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return (
            isinstance(document, dict)
            and isinstance(document.get("model"), dict)
            and "model_type" not in document
        )

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> EoleAdapter:
        """Build the model with EOLE's `for_inference`, in eval mode on the requested device."""
        path = Path(path)
        config = check_folder(path)
        eole = import_eole()
        running = predict_config(path, config, options, eole)
        model_class = eole["get_model_class"](running.model)
        if model_class.__name__ not in TEXT_MODELS:
            raise InputError(
                f"{path}/config.json describes an EOLE {model_class.__name__} "
                f"(architecture {architecture_of(config)!r}); attnent reads EOLE's text models "
                "(transformer, transformer_lm, transformer_encoder). Give one of those"
            )
        kinds = [
            getattr(running.model.encoder, "encoder_type", "transformer"),
            getattr(running.model.decoder, "decoder_type", "transformer"),
        ]
        if any(kind != "transformer" for kind in kinds):
            raise InputError(
                f"{path}/config.json describes an EOLE model with a {' and a '.join(kinds)} "
                "block; attnent reads transformer attention only. Give a transformer model"
            )
        try:
            with kept_environment("MODEL_PATH"):
                model, vocabs, model_config = model_class.for_inference(
                    running, device_id=device_id(options.device), model_path=str(path)
                )
        except (ValueError, KeyError, RuntimeError) as error:
            raise InputError(
                f"EOLE could not load the weights in {path} ({first_lines(error)}). "
                "Give the model.*.safetensors saved with this config.json"
            ) from None
        model.eval()
        return cls.from_parts(path, model, vocabs, model_config, running, config, eole)

    @classmethod
    def from_parts(cls, path, model, vocabs, model_config, running, config, eole) -> EoleAdapter:
        """The adapter of a built EOLE model: its sides, types, tokenisation and step."""
        transforms_cls = eole["get_transforms_cls"](running._all_transform)
        transforms = eole["make_transforms"](running, transforms_cls, vocabs)
        pipe = eole["TransformPipe"].build_from(transforms.values())
        model_type = eole["resolve_model_type"](model_config)
        numericalizer = eole["Numericalizer"](vocabs, model_type, task=eole["CorpusTask"].VALID)
        if model.encoder is None:
            attn_types, sides = ("self",), ("src",)
        elif model.decoder is None:
            attn_types, sides = ("enc_self",), ("src",)
        else:
            attn_types, sides = ("enc_self", "self", "context"), ("src", "tgt")
        return cls(
            path=path,
            model=model,
            attn_types=attn_types,
            sides=sides,
            step=named_step(path),
            max_positions=max_positions(model),
            vocab_size=None,  # EOLE maps unknown tokens to <unk>, so every id is in range
            extras={"architecture": architecture_of(config), "std": std_site(model)},
            vocabs=vocabs,
            transform=pipe,
            numericalizer=numericalizer,
            config=config,
        )

    def sites(self) -> list[AttentionSite]:
        """Encoder self-attention, decoder self-attention and cross-attention, layer by layer."""
        sites = []
        if self.model.encoder is not None:
            for i, layer in enumerate(self.model.encoder.transformer_layers):
                name = f"encoder.transformer_layers.{i}.self_attn"
                sites.append(site(layer.self_attn, name, "enc_self", i, "src"))
        decoder_side = "tgt" if "tgt" in self.sides else "src"
        layers = self.model.decoder.transformer_layers if self.model.decoder is not None else []
        for i, layer in enumerate(layers):
            name = f"decoder.transformer_layers.{i}"
            if getattr(layer, "self_attn", None) is not None:
                sites.append(site(layer.self_attn, f"{name}.self_attn", "self", i, decoder_side))
            if getattr(layer, "context_attn", None) is not None:
                sites.append(site(layer.context_attn, f"{name}.context_attn", "context", i, "tgt"))
        return sites

    def encode(self, example: Example, max_length: int | None) -> tuple[dict, bool]:
        """Token ids per side through the checkpoint's transforms and EOLE's numericaliser."""
        from eole.constants import CorpusTask
        from eole.inputters.text_utils import transform_bucket

        tgt = example.tgt if "tgt" in self.sides else None
        if "tgt" in self.sides and tgt is None:
            raise UsageError(
                f"{self.path} is an encoder-decoder model and needs a target side. "
                "Pass --tgt FILE or --tsv"
            )
        raw = {"src": example.src, "tgt": tgt, "sco": 1.0}
        out = transform_bucket(CorpusTask.VALID, [(raw, self.transform, "attnent")])
        if out is None:
            raise InputError(
                f"line {example.line + 1} of the data is empty after the checkpoint's transforms "
                f"({', '.join(self.transform_names()) or 'none'}). Remove empty lines"
            )
        numericalized = self.numericalizer(out[0])
        tokens = {"src": list(numericalized["src"]["src_ids"])}
        if tgt is not None:
            tokens["tgt"] = list(numericalized["tgt"]["tgt_ids"])
        if max_length is None:
            return tokens, False
        cut = any(len(ids) > max_length for ids in tokens.values())
        return {side: ids[:max_length] for side, ids in tokens.items()}, cut

    def collate(self, items: Sequence[dict]) -> Batch:
        """Right-padded (batch, seq) ids; query masks mark real positions per side.

        The decoder reads `tgt[:, :-1]`. Its query rows are `<s>` and the target tokens of each
        example; the `</s>` input row that shorter targets keep (and the longest loses) is not
        one, so an example's rows do not depend on the other examples in its batch.
        """
        src_lengths = torch.tensor([len(item["src"]) for item in items])
        src = pad_ids([item["src"] for item in items], self.pad_id("src"))  # (batch, src)
        inputs = {"src": src, "tgt": None, "src_len": src_lengths}
        masks = {"src": positions_below(src_lengths, src.shape[1])}
        if "tgt" in self.sides:
            tgt_lengths = torch.tensor([len(item["tgt"]) for item in items])
            tgt = pad_ids([item["tgt"] for item in items], self.pad_id("tgt"))  # (batch, tgt)
            inputs["tgt"] = tgt
            masks["tgt"] = positions_below(tgt_lengths - 1, tgt.shape[1] - 1)  # (batch, tgt-1)
        return Batch(inputs, masks, size=len(items))

    def forward(self, batch: Batch) -> Any:
        """EOLE's own teacher-forced forward; returns its ModelOutput (attns["std"] inside)."""
        inputs = batch.inputs
        return self.model(inputs["src"], inputs["tgt"], inputs["src_len"])

    def pad_id(self, side: str) -> int:
        """The id of EOLE's pad token in the vocabulary of `side`."""
        return self.vocabs[side][self.vocabs["specials"].get("pad_token", "<blank>")]

    def transform_names(self) -> list[str]:
        """Names of the checkpoint's inference transforms, in order."""
        return [type(t).__name__ for t in getattr(self.transform, "transforms", [])]


def site(module: torch.nn.Module, name: str, attn_type: str, layer: int, side: str):
    """An AttentionSite observed through EOLE's own per-head weights."""
    return AttentionSite(module, name, attn_type, layer, side, probs=EoleAttentionWeights())


def pad_ids(sequences: Sequence[list[int]], pad: int) -> torch.Tensor:
    """(batch, longest) long tensor, right-padded with `pad`."""
    tensors = [torch.tensor(ids, dtype=torch.long) for ids in sequences]
    return pad_sequence(tensors, batch_first=True, padding_value=pad)


def positions_below(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) bool, True at positions below each length."""
    return torch.arange(width)[None, :] < lengths[:, None]


def std_site(model: torch.nn.Module) -> tuple[str, int, int] | None:
    """(attn_type, layer, head) of EOLE's `attns["std"]`: head 0 of the last decoder layer.

    `TransformerDecoder._forward_eager` keeps the attention the last layer returns: its
    cross-attention when it has one, else its self-attention. None without a decoder.
    """
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        return None
    last = len(decoder.transformer_layers) - 1
    layer = decoder.transformer_layers[last]
    return ("context" if getattr(layer, "context_attn", None) is not None else "self", last, 0)


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's position encodings cover; None when unbounded."""
    limits = []
    for embeddings in (getattr(model, "src_emb", None), getattr(model, "tgt_emb", None)):
        pe = getattr(embeddings, "pe", None)
        if isinstance(pe, torch.nn.Embedding):
            limits.append(pe.num_embeddings)
        elif pe is not None and torch.is_tensor(getattr(pe, "pe", None)):
            limits.append(pe.pe.shape[0])  # sinusoidal table (max_len, 1, dim)
    rope = getattr(getattr(model, "decoder", None), "rope", None)
    cos_sin = getattr(rope, "cos_sin", None)
    if torch.is_tensor(cos_sin) and cos_sin.dim() == 2:
        limits.append(cos_sin.shape[0])
    return min(limits) if limits else None


def check_folder(path: Path) -> dict:
    """The parsed config.json of an EOLE folder that has a vocabulary and weights."""
    if not path.is_dir():
        raise UsageError(f"EOLE checkpoint {path} is not a folder. Give a model/step_N folder")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path}/config.json ({error}). Check the file") from None
    if not (path / "vocab.json").is_file():
        raise InputError(
            f"{path} has an EOLE config.json but no vocab.json. "
            "Copy vocab.json from the run's model folder next to config.json"
        )
    if not list(path.glob(WEIGHTS_GLOB)):
        raise InputError(
            f"{path} has an EOLE config.json but no {WEIGHTS_GLOB} weights. "
            "Give a complete step_N folder as EOLE saved it"
        )
    return config


def architecture_of(config: dict) -> str:
    """The `model.architecture` a config.json names, or a description when it names none."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return str(model.get("architecture", "unnamed"))


def import_eole() -> dict[str, Any]:
    """EOLE's loading, transform and numericalising entry points, or a UsageError."""
    if importlib.util.find_spec("eole") is None:
        raise UsageError(f"EOLE checkpoints need the eole package. Install it with: {INSTALL_HINT}")
    with warnings.catch_warnings():
        # eole warns at import that its optional C++ ops and flash-attn are missing
        warnings.simplefilter("ignore", RuntimeWarning)
        from eole.config.run import PredictConfig
        from eole.constants import CorpusTask
        from eole.inputters.dynamic_iterator import _resolve_numericalizer_model_type
        from eole.inputters.text_utils import Numericalizer
        from eole.models.model import get_model_class
        from eole.transforms import TransformPipe, get_transforms_cls, make_transforms
    return {
        "PredictConfig": PredictConfig,
        "CorpusTask": CorpusTask,
        "resolve_model_type": _resolve_numericalizer_model_type,
        "Numericalizer": Numericalizer,
        "get_model_class": get_model_class,
        "TransformPipe": TransformPipe,
        "get_transforms_cls": get_transforms_cls,
        "make_transforms": make_transforms,
    }


def predict_config(path: Path, config: dict, options: LoadOptions, eole: dict[str, Any]) -> Any:
    """EOLE's PredictConfig for the folder: its model config and its inference transforms."""
    compute_dtype = check_dtype(options.dtype)
    on_gpu = options.device != "cpu"
    try:
        with kept_environment("MODEL_PATH"):
            return eole["PredictConfig"](
                model_path=str(path),
                src="-",  # required by the class; attnent feeds examples itself
                world_size=1,
                gpu_ranks=[device_id(options.device)] if on_gpu else [],
                compute_dtype=compute_dtype,
            )
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InputError(
            f"EOLE 0.6.4 cannot build the model in {path}/config.json (architecture "
            f"{architecture_of(config)!r}: {first_lines(error)}). "
            "Give a checkpoint saved by EOLE 0.6.4, or convert it with that version"
        ) from None


def first_lines(error: BaseException, lines: int = 3, chars: int = 300) -> str:
    """The first lines of an exception message, joined on one line."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines()[:lines])
    return (text or type(error).__name__)[:chars]


def device_id(device: str) -> int:
    """EOLE's device_id for a torch device string: -1 for the CPU, the CUDA index otherwise."""
    if device == "cpu":
        return -1
    return torch.device(device).index or 0


@contextmanager
def kept_environment(name: str) -> Iterator[None]:
    """Restore environment variable `name` afterwards (EOLE sets MODEL_PATH while loading)."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def weights_returned(model: torch.nn.Module) -> Iterator[None]:
    """Every EOLE attention module of `model` returns per-head weights, on any device.

    EOLE's `EncoderDecoderModel.forward` has no `return_attn` argument, so on a GPU its
    `attns["std"]` is None; this asks each attention module for its weights directly.
    """
    from eole.modules.multi_headed_attn import MultiHeadedAttention

    def ask(module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        bound.arguments["return_attn"] = True
        return bound.args, bound.kwargs

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, MultiHeadedAttention):
                handles.append(module.register_forward_pre_hook(ask, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def eole_architecture(path: Path) -> str | None:
    """A short description of an EOLE folder's architecture from its config.json, or None.

    Cheap (no eole import): used to refuse checkpoint lists that mix architectures.
    """
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    model = config.get("model")
    if not isinstance(model, dict):
        return None
    parts = [architecture_of(config)]
    for key in ("layers", "heads", "hidden_size"):
        if key in model:
            parts.append(f"{key} {model[key]}")
    return ", ".join(parts)
