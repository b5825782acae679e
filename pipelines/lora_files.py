"""Reading a LoRA file without taking orders from it: the tensors are data, the adapter config is built here.

A diffusers LoRA file carries a peft ``LoraConfig`` in its safetensors header (``lora_adapter_metadata``), and
diffusers would hand it to ``LoraConfig(**metadata)`` as it is. Much of that config is not a description of the
tensors but instructions to peft about the model they go into: ``init_lora_weights`` set to ``pissa``, ``olora`` or
``loftq`` rewrites the base weights when the adapter is injected, ``layer_replication`` copies layers,
``fan_in_fan_out`` transposes, an ``r`` that does not match the tensors fails the load after the base weights were
rewritten. One request's file would then change the model that every later job on the worker runs. So the header
never reaches diffusers or peft: the tensors are read here with safetensors (a pickle is never unpickled), and the
adapter config is built from them: the layers from the keys, each layer's rank from its factors' shapes, a bias
where a B factor has one, peft's defaults for everything else. The one thing taken from the header is how strongly
each layer applies, when it is given as plain numbers: ``lora_alpha``, ``alpha_pattern`` (matched literally) and
``use_rslora``; any other value of those is refused, everything else in the header is ignored.

Every key must also name a linear layer of the Wan VACE transformer the LoRA goes into, with fitting shapes
(:func:`check_fits`): diffusers would skip unmatched keys with a warning and fail on wrong shapes halfway through a
load. The original Wan, ComfyUI and musubi-tuner key layouts are converted by diffusers'
``WanLoraLoaderMixin.lora_state_dict`` (given the tensors, never the file) before the checks.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import WanVACEPipeline, WanVACETransformer3DModel
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError, safe_open

from .errors import InputError

LOAD_ERROR = "lora_load_error"
PREFIX = "transformer."
HEADER_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY: the adapter config in the header
LORA_KEY = re.compile(r"transformer\.(?P<module>.+)\.lora_(?P<part>A\.weight|B\.weight|B\.bias)")
Field = tuple[str, int, str]
Number = TypeVar("Number", int, float)


@dataclass(frozen=True)
class LoraFile:
    """A LoRA's tensors in diffusers' layout, and per layer it adapts the rank and alpha its adapter gets (peft
    scales a layer's B A x by alpha / rank)."""

    state_dict: dict[str, torch.Tensor]
    ranks: dict[str, int]
    """Every adapted layer's rank: its factors' inner size (a layer with only a B bias: the most common rank)."""
    alphas: dict[str, float]

    def scaling(self, layer: str) -> float:
        return self.alphas[layer] / self.ranks[layer]

    def adapter_metadata(self) -> dict[str, object]:
        """The adapter config to load this LoRA with (diffusers' ``metadata``)."""
        bias = any(key.endswith(".lora_B.bias") for key in self.state_dict)
        return adapter_metadata(self.ranks, self.alphas, bias)


def adapter_metadata(ranks: Mapping[str, int], alphas: Mapping[str, float], bias: bool) -> dict[str, object]:
    """An adapter config in the form diffusers reads from a file's header and passes to ``LoraConfig``: exactly
    these layers, with these ranks and alphas (the most common as ``r``/``lora_alpha``, the others as patterns
    anchored to the full layer name), and peft's defaults for everything else; ``init_lora_weights=True`` makes
    zero-effect factors, which the state dict then overwrites, and leaves the base weights alone."""
    rank = _most_common(ranks)
    alpha = _most_common(alphas)
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {f"^{re.escape(layer)}": r for layer, r in sorted(ranks.items()) if r != rank},
        "alpha_pattern": {f"^{re.escape(layer)}": a for layer, a in sorted(alphas.items()) if a != alpha},
        "target_modules": sorted(ranks),
        "lora_bias": bias,
        "init_lora_weights": True,
    }
    return {PREFIX + key: value for key, value in config.items()}


def _most_common(values: Mapping[str, Number]) -> Number:
    counts = Counter(values.values())
    return max(counts, key=lambda value: (counts[value], -value))  # ties: the smallest, so the config is stable


def read_lora_file(path: Path, field: Field) -> LoraFile:
    """The LoRA in ``path``: its tensors (converted to diffusers' layout) checked for a consistent shape, and its
    ranks and alphas; a 422 on ``field`` for a file that is not a LoRA or whose header gives an unreadable alpha."""
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has keys(), no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            field,
            f"not a .safetensors file ({str(exc)[:80]}); LoRAs are only read from safetensors, "
            "never unpickled: convert a .pt/.ckpt file first",
            LOAD_ERROR,
        ) from None
    strength = _Strength.from_header(header.get(HEADER_KEY), field)
    try:
        state_dict = WanVACEPipeline.lora_state_dict(tensors)
    except Exception as exc:  # noqa: BLE001 - diffusers' key converters raise anything from KeyError to ValueError
        raise InputError(
            field, f"not a Wan LoRA diffusers can read ({type(exc).__name__}: {str(exc)[:160]})", LOAD_ERROR
        ) from None
    ranks = _factor_ranks(state_dict, field)
    return LoraFile(state_dict, ranks, {layer: strength.alpha(layer, rank) for layer, rank in ranks.items()})


def _factor_ranks(state_dict: Mapping[str, torch.Tensor], field: Field) -> dict[str, int]:
    """Each adapted layer's rank, from the shapes of its factors, which must agree; refuses keys that are not Wan
    LoRA weights, tensors of the wrong kind and a down factor without its up factor (or the reverse)."""
    ranks: dict[str, int] = {}
    parts: dict[str, set[str]] = {}
    for key, tensor in state_dict.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise InputError(
                field,
                f"key {key!r:.160} is not a LoRA weight of a Wan transformer: a LoRA for another architecture?",
                LOAD_ERROR,
            )
        layer, part = match["module"], match["part"]
        parts.setdefault(layer, set()).add(part)
        if not tensor.is_floating_point():
            raise InputError(field, f"{key!r:.160} holds {tensor.dtype} values, not floating point", LOAD_ERROR)
        if tensor.ndim != (1 if part == "B.bias" else 2):
            raise InputError(
                field, f"{key!r:.160} has shape {tuple(tensor.shape)}, not that of a LoRA factor", LOAD_ERROR
            )
        if part == "B.bias":
            continue
        rank = tensor.shape[0] if part == "A.weight" else tensor.shape[1]
        if rank < 1 or ranks.setdefault(layer, rank) != rank:
            raise InputError(field, f"the factors of {layer!r:.160} disagree on their rank (or it is 0)", LOAD_ERROR)
    if not ranks:
        raise InputError(field, "the file holds no LoRA weights for a Wan transformer", LOAD_ERROR)
    for layer, found in parts.items():
        if ("A.weight" in found) != ("B.weight" in found):
            raise InputError(
                field, f"the LoRA has only one of the two factors (lora_A, lora_B) of {layer!r:.160}", LOAD_ERROR
            )
    rank = _most_common(ranks)
    return {layer: ranks.get(layer, rank) for layer in parts}  # a bias-only layer: its adapter's zero factors


@dataclass(frozen=True)
class _Strength:
    """What a file's header says about how strongly each layer applies (peft: alpha / rank, or alpha / sqrt(rank)
    under rank-stabilised LoRA); without a header a layer applies at alpha = rank, diffusers' convention."""

    alpha_all: float | None = None
    patterns: tuple[tuple[str, float], ...] = ()
    rslora: bool = False

    @classmethod
    def from_header(cls, raw: str | None, field: Field) -> _Strength:
        if not raw:
            return cls()
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):
            header = None
        if not isinstance(header, dict):
            raise InputError(field, f"the file's {HEADER_KEY} header is not a JSON object", LOAD_ERROR)
        alpha = header.get(PREFIX + "lora_alpha")
        patterns = header.get(PREFIX + "alpha_pattern") or {}
        rslora = header.get(PREFIX + "use_rslora") or False
        if not isinstance(patterns, dict) or not all(isinstance(key, str) for key in patterns):
            raise InputError(
                field, "alpha_pattern in the file's header is not a map of layer names to numbers", LOAD_ERROR
            )
        if not isinstance(rslora, bool):
            raise InputError(field, f"use_rslora in the file's header is {rslora!r:.40}, not true or false", LOAD_ERROR)
        pairs = tuple((key, _number(value, f"alpha_pattern[{key!r:.80}]", field)) for key, value in patterns.items())
        return cls(None if alpha is None else _number(alpha, "lora_alpha", field), pairs, rslora)

    def alpha(self, layer: str, rank: int) -> float:
        """The alpha that gives ``layer`` the file's scaling with peft's plain alpha / rank; alpha_pattern keys are
        matched as peft matches them, on the layer's name or a dotted suffix of it (``^`` anchoring the start), but
        literally: a regular expression from a file is never run."""
        alpha = next((value for key, value in self.patterns if _names(key, layer)), self.alpha_all)
        if alpha is None:
            alpha = rank
        return alpha * math.sqrt(rank) if self.rslora else alpha


def _names(pattern: str, layer: str) -> bool:
    if pattern.startswith("^"):
        return layer == pattern[1:]
    return layer == pattern or layer.endswith("." + pattern)


def _number(value: object, what: str, field: Field) -> float:
    """A header value that must be a plain finite number (JSON allows NaN, Infinity and ints past any float)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise InputError(field, f"{what} in the file's header is {value!r:.40}, not a finite number", LOAD_ERROR)


def check_fits(lora: LoraFile, layers: Mapping[str, torch.nn.Linear], field: Field) -> None:
    """Refuse a LoRA whose layers are not all linear layers of the transformer ``layers`` come from, with the
    shapes they have there: a LoRA for another model (another base, another size) would otherwise half load or load
    nothing."""
    for key, tensor in lora.state_dict.items():
        match = LORA_KEY.fullmatch(key)
        assert match is not None  # read_lora_file checked every key
        name, part = match["module"], match["part"]
        layer = layers.get(name)
        if layer is None:
            raise InputError(
                field,
                f"the LoRA adapts {name!r:.160}, which is not a linear layer of the Wan VACE "
                "transformer: a LoRA for another architecture?",
                LOAD_ERROR,
            )
        ok = tensor.shape[1] == layer.in_features if part == "A.weight" else tensor.shape[0] == layer.out_features
        if not ok:
            raise InputError(
                field,
                f"shape {tuple(tensor.shape)} of {key!r:.160} does not fit the layer "
                f"({layer.in_features} -> {layer.out_features}): a LoRA for another model size?",
                LOAD_ERROR,
            )


def linear_layers(expert: WanVACETransformer3DModel) -> dict[str, torch.nn.Linear]:
    """The layers a LoRA may adapt: every linear layer of the transformer by name, an adapted one (a peft
    ``LoraLayer``, from an earlier job or a compiled server's slot) as its base layer; the LoRA factors inside an
    adapted layer are linear layers too, but not ones a LoRA may name."""
    layers: dict[str, torch.nn.Linear] = {}
    adapted: tuple[str, ...] = ()
    for name, module in expert.named_modules():
        if name.startswith(adapted):  # named_modules goes depth first: an adapted layer's parts come right after it
            continue
        if isinstance(module, LoraLayer):
            base, adapted = module.get_base_layer(), (f"{name}.",)
            if isinstance(base, torch.nn.Linear):
                layers[name] = base
        elif isinstance(module, torch.nn.Linear):
            layers[name] = module
    return layers


@functools.lru_cache(maxsize=8)
def architecture_layers(folder: Path) -> dict[str, torch.nn.Linear]:
    """The linear layers of the transformer whose ``config.json`` is in ``folder``, built on the meta device (shapes,
    no weights, well under a second for 14B): a downloaded LoRA is checked against them before it is cached, while
    the model may not be loaded yet."""
    config = WanVACETransformer3DModel.load_config(folder)
    with torch.device("meta"):
        return linear_layers(WanVACETransformer3DModel.from_config(config))
