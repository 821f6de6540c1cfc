"""The capture session: hooks on attention modules, SDPA interception, per-site sums."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attn_entropy_cli.capture.sites import AttentionSite
from attn_entropy_cli.entropy import EntropySums, probs_entropy, sdpa_entropy
from attn_entropy_cli.errors import InputError

SDPA_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
        for name, default in [
            ("query", inspect.Parameter.empty),
            ("key", inspect.Parameter.empty),
            ("value", inspect.Parameter.empty),
            ("attn_mask", None),
            ("dropout_p", 0.0),
            ("is_causal", False),
            ("scale", None),
            ("enable_gqa", False),
        ]
    ]
)
FIX_HINT = (
    "attnent needs one attention per module and forward pass; "
    "use --factory to give it a model that computes attention through PyTorch's SDPA"
)


class SDPAInterceptor(TorchFunctionMode):
    """Calls `on_call` with the bound arguments of every SDPA call, then runs the call."""

    def __init__(self, on_call: Callable[[inspect.BoundArguments], None]):
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            call = SDPA_SIGNATURE.bind(*args, **kwargs)
            call.apply_defaults()
            self.on_call(call)
        return func(*args, **kwargs)


class AttentionCapture:
    """Per-(attn_type, layer) entropy sums of the forward passes run through `run`."""

    def __init__(
        self,
        model: torch.nn.Module,
        sites: Sequence[AttentionSite],
        observe: Collection[tuple[str, int]] | None = None,
    ):
        self.model = model
        self.sites = list(sites)
        # sites left out of `observe` are only counted, not measured
        self.measured = [
            observe is None or (site.attn_type, site.layer) in observe for site in self.sites
        ]
        self.sums: dict[tuple[str, int], EntropySums] = {}
        self.stack: list[int] = []  # indices of the sites whose forward is running
        self.calls = [0] * len(self.sites)  # attention calls per site in this forward
        self.query_masks: dict[str, torch.Tensor] = {}

    def run(self, forward: Callable[[], Any], query_masks: dict[str, torch.Tensor]) -> None:
        """Run one forward pass and add its rows; query_masks: side -> (batch, seq) bool."""
        self.stack.clear()
        self.calls = [0] * len(self.sites)
        self.query_masks = query_masks
        with torch.inference_mode(), SDPAInterceptor(self.on_sdpa):
            forward()
        for site, calls in zip(self.sites, self.calls, strict=True):
            if calls != 1:
                raise InputError(
                    f"attention module {site.name} ({site.attn_type}, layer {site.layer}) "
                    f"computed {calls} attentions in one forward pass. {FIX_HINT}"
                )

    def on_sdpa(self, call: inspect.BoundArguments) -> None:
        """Add the rows of one SDPA call to the site that made it."""
        if not self.stack:
            raise InputError(
                "the model computed an attention outside every module attnent knows as "
                f"attention, so its table would be partial. {FIX_HINT}"
            )
        index = self.stack[-1]
        site = self.sites[index]
        if site.probs is not None:
            return  # this site reports its own per-head probabilities
        if not self.measured[index]:
            self.calls[index] += 1
            return
        args = call.arguments
        query, key = args["query"], args["key"]
        if query.dim() != 4:
            raise InputError(
                f"attention module {site.name} called SDPA with a {query.dim()}-d query, "
                f"not (batch, heads, q, dim). {FIX_HINT}"
            )
        entropy, n_keys = sdpa_entropy(
            query, key, args["attn_mask"], bool(args["is_causal"]), args["scale"]
        )
        self.add(index, entropy, n_keys)

    def add(self, index: int, entropy: torch.Tensor, n_keys: torch.Tensor) -> None:
        """Add rows (batch, heads, q) of site `index`, keeping only real query positions."""
        site = self.sites[index]
        valid = self.query_masks.get(site.query_side)
        if valid is None or tuple(valid.shape) != (entropy.shape[0], entropy.shape[2]):
            shape = None if valid is None else tuple(valid.shape)
            raise InputError(
                f"attention module {site.name} attended from {entropy.shape[2]} queries in "
                f"{entropy.shape[0]} sequences, but the {site.query_side!r} query mask is "
                f"{shape}. {FIX_HINT}"
            )
        key = (site.attn_type, site.layer)
        sums = self.sums.setdefault(key, EntropySums.zeros(entropy.shape[1]))
        if sums.n_rows.shape[0] != entropy.shape[1]:
            raise InputError(
                f"attention module {site.name} changed its number of heads between calls. "
                f"{FIX_HINT}"
            )
        sums.add(entropy, n_keys, valid.to(entropy.device))
        self.calls[index] += 1

    def hooks(self, stack: ExitStack) -> None:
        """Register the pre/post forward hooks of every site; `stack` removes them."""
        for index, site in enumerate(self.sites):
            pre, post = self.site_hooks(index, site)
            stack.callback(site.module.register_forward_pre_hook(pre, with_kwargs=True).remove)
            stack.callback(site.module.register_forward_hook(post, with_kwargs=True).remove)

    def site_hooks(self, index: int, site: AttentionSite):
        """The (pre, post) hooks that keep the stack and, for probs sites, read the weights."""

        weights = site.probs if self.measured[index] else None

        def pre(module, args, kwargs):
            self.stack.append(index)
            if weights is not None:
                return weights.request(module, args, kwargs)
            return None

        def post(module, args, kwargs, output):
            if self.stack and self.stack[-1] == index:
                self.stack.pop()
            if site.probs is not None and weights is None:
                self.calls[index] += 1  # a probs site left unmeasured: counted only
                return None
            if weights is None:
                return None
            probs, key_mask, output = weights.extract(module, args, kwargs, output)
            entropy, n_keys = probs_entropy(probs, key_mask)
            self.add(index, entropy, n_keys)
            return output

        return pre, post


@contextmanager
def capture_attention(
    model: torch.nn.Module,
    sites: Sequence[AttentionSite],
    observe: Collection[tuple[str, int]] | None = None,
) -> Iterator[AttentionCapture]:
    """Observe `sites` of `model` while the block runs forward passes through `capture.run`.

    Every site is checked for one attention per forward pass; only the (attn_type, layer)
    pairs in `observe` (all when None) are measured and appear in `capture.sums`.

    The model runs in eval mode with PyTorch's fused MultiheadAttention paths off (they
    bypass both SDPA and per-head weights); its mode, the hooks and the fast-path switch are
    restored when the block ends, whatever happens.
    """
    capture = AttentionCapture(model, sites, observe)
    # each module's own flag: a model may hold frozen eval-mode parts inside a training one
    modes = [(module, module.training) for module in model.modules()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with ExitStack() as stack:
        try:
            model.eval()
            torch.backends.mha.set_fastpath_enabled(False)
            capture.hooks(stack)
            yield capture
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            for module, training in modes:
                module.training = training
