"""LoRAs by name, and the up-front check of a request's LoRAs: what the server answers without loading a model.

Requests name an installed LoRA by its path under the weights directory's ``loras/`` folder without
``.safetensors``; ``GET /loras`` lists them. ``check_loras`` runs with the other up-front checks
(``pipelines.checks``), on API nodes too, so this module imports no model library; fetching a LoRA and putting it
on the experts is ``pipelines.loras``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .context import JobContext
from .errors import InputError
from .manifest import LORAS_FOLDER, MODELS
from .schema import EndpointInput, LoraWeight

SUFFIX = ".safetensors"
# A LoRA name: folders and a file name under loras/, none starting with a dot (so no "..", no hidden files).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")


def lora_folder(weights_dir: Path) -> Path:
    return Path(weights_dir, LORAS_FOLDER)


def installed_loras(weights_dir: Path) -> dict[str, Path]:
    """Every LoRA in the weights directory's ``loras/`` folder by the name requests use (its path there without
    ``.safetensors``); hidden folders (the hub's download cache) are skipped."""
    folder = lora_folder(weights_dir)
    found = {}
    for path in sorted(folder.rglob(f"*{SUFFIX}")):
        name = path.relative_to(folder).as_posix().removesuffix(SUFFIX)
        if NAME.fullmatch(name) and path.is_file():
            found[name] = path
    return found


def find_named(weights_dir: Path, name: str) -> Path | None:
    """The file of the installed LoRA ``name`` (with or without ``.safetensors``), or None."""
    if not NAME.fullmatch(name):
        return None
    path = lora_folder(weights_dir) / (name if name.endswith(SUFFIX) else name + SUFFIX)
    return path if path.is_file() else None


def lora_at_path(lora: LoraWeight, ctx: JobContext) -> Path | None:
    """The file a CLI caller names by its path (``--lora ./style.safetensors``); servers take names and URLs only."""
    if not ctx.local_paths or lora.is_ref:
        return None
    path = Path(lora.path).expanduser()
    return path if path.is_file() else None


def check_loras(inp: EndpointInput, model: str, ctx: JobContext, weights_dir: Path | None) -> None:
    """The up-front checks of a request's LoRAs (their URL schemes are checked with the other media refs); without
    a ``weights_dir`` (a node without workers) installed names are left to the worker."""
    loras = inp.loras or []
    if len(loras) > ctx.limits.max_loras:
        raise InputError("loras", f"{len(loras)} LoRAs, over the limit of {ctx.limits.max_loras}", "too_many_loras")
    two_experts = MODELS[model].two_experts
    for i, lora in enumerate(loras):
        if lora.transformer == "low" and not two_experts:
            raise InputError(
                ("loras", i, "transformer"),
                f"{model} has one transformer: use both or high, low is "
                "only for the low-noise expert of wan-22-vace-fun-a14b",
                "not_supported",
            )
        if lora.is_ref or lora_at_path(lora, ctx) is not None or weights_dir is None:
            continue
        if find_named(weights_dir, lora.path) is None:
            where = "a local file, " if ctx.local_paths else ""
            raise InputError(
                ("loras", i, "path"),
                f"{lora.path!r} is not {where}an http(s) URL, a data URI or the "
                f"name of an installed LoRA (GET /loras lists them)",
                "lora_not_found",
            )
