"""Transformer calls per job: the step-distilled fast path (a distillation LoRA, 4 steps, guidance 1) against the
default request (30 steps with classifier-free guidance), on tiny weights.

A denoising job's GPU time is almost all transformer forwards of the same size, so the ratio of their counts bounds
the speed-up of the recipe on any GPU (text encoding and VAE decoding, the same for both, are what keeps it below
the bound). Counted with forward pre-hooks on each expert during real ``generate()`` jobs; the default request is
counted both with its default step cache (``acceleration=regular``, which skips some calls) and without it.

    .venv/bin/python bench/lora_fast_path.py [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipelines.generate import generate
from pipelines.loading import ModelManager
from pipelines.manifest import DISTILL_LORAS, LIGHTNING_WAN22, LIGHTX2V_WAN21
from pipelines.schema import VaceInput
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample

RECIPE = {"num_inference_steps": 4, "guidance_scale": 1.0, "sampler": "unipc", "shift": 5.0, "acceleration": "none"}


def recipe_loras(model: str) -> list[dict[str, object]]:
    """The manifest's distillation LoRAs as a request names them (tiny stand-ins on tiny weights)."""

    def name(key: str, index: int) -> str:
        entry = DISTILL_LORAS[key]
        return f"{entry.folder.removeprefix('loras/')}/{entry.required[index].removesuffix('.safetensors')}"

    if model == "wan-vace-14b":
        return [{"path": name(LIGHTX2V_WAN21, 0)}]
    return [
        {"path": name(LIGHTNING_WAN22, 0), "transformer": "high"},
        {"path": name(LIGHTNING_WAN22, 1), "transformer": "low"},
    ]


def count_calls(manager: ModelManager, model: str, video: Path, fields: dict[str, object]) -> int:
    pipe = manager.get(model).pipe
    calls = []
    hooks = [
        expert.register_forward_pre_hook(lambda *_a: calls.append(1))
        for expert in (pipe.transformer, pipe.transformer_2)
        if expert is not None
    ]
    with tempfile.TemporaryDirectory() as work:
        inp = VaceInput(prompt="a person dancing", video_url=str(video), num_frames=17, seed=1, **fields)
        generate(inp, task="pose", model=model, manager=manager, workdir=Path(work), publish=lambda p, _t: str(p))
    for hook in hooks:
        hook.remove()
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, help="tiny weights (built in a temporary folder if not given)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights_dir or build_tiny_weights(Path(scratch) / "weights")
        video = write_sample("pose", Path(scratch) / "pose.mp4", num_frames=17)
        manager = ModelManager(weights, device="cpu")
        print(
            "| model | recipe (4 steps, guidance 1, LoRA) | default (30 steps, guidance 5, step cache) | "
            "default without step cache | ratio (no cache) |"
        )
        print("|---|---|---|---|---|")
        for model in ("wan-vace-14b", "wan-22-vace-fun-a14b"):
            recipe = count_calls(manager, model, video, {**RECIPE, "loras": recipe_loras(model)})
            default = count_calls(manager, model, video, {})
            plain = count_calls(manager, model, video, {"acceleration": "none"})
            print(f"| {model} | {recipe} | {default} | {plain} | {plain / recipe:.1f}x |")


if __name__ == "__main__":
    main()
