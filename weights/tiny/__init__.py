"""``vace weights tiny DIR``: small random-weight models in the exact on-disk layout of the real weights.

No model hub is reachable on build machines, so tests and the demo run on models built here: the real
architectures (the Wan models in ``wan.py`` and LoRAs for them in ``loras.py``; DWPose, OpenPose, MiDaS and Depth
Anything V2 in ``annotators.py``; RIFE and FILM in ``rife.py`` and ``film.py``; the SAM2.1 mask tracker's
``Sam2VideoModel`` in ``tracker.py``; the safety checker's ``ViTForImageClassification`` in ``safety.py``; the
prompt expander's ``Qwen2ForCausalLM`` in ``prompt_expander.py``), shrunk and saved in the real formats into the
folders the manifest names, which ``vace weights download`` fills. The loaders cannot tell them apart from real
weights, which is the point: the code that serves real weights is the code under test. ``samples.py`` draws the
synthetic control videos the demo, the tests and the benchmarks feed them.

Test scaffolding lives here, not in the packages it exercises: ``weights`` imports ``pipelines`` and
``preprocessors``, never the reverse.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
import transformers

from pipelines.interpolation import weights_path
from pipelines.manifest import AUXILIARY, MASK_TRACKERS, PROMPT_EXPANDER, SAFETY_CHECKER

from .annotators import build_tiny_annotators
from .film import build_tiny_film
from .loras import build_tiny_loras
from .prompt_expander import build_prompt_expander
from .rife import build_tiny_rife
from .safety import build_safety_checker
from .tracker import build_tiny_tracker
from .wan import build_wan_models

__all__ = ["build_tiny_interpolators", "build_tiny_weights"]


def build_tiny_interpolators(weights_dir: Path) -> list[Path]:
    """Write random-weight RIFE (real 4.26 shapes) and FILM (reduced widths) files where the loaders look."""
    return [build_tiny_rife(weights_path("rife", weights_dir)), build_tiny_film(weights_path("film", weights_dir))]


def build_tiny_weights(weights_dir: Path, seed: int = 0) -> Path:
    """Write every model of the manifest (generation models, annotators, interpolators, the mask trackers, the safety
    checker and the prompt-expansion LM) with tiny random weights into ``weights_dir``, and a tiny LoRA per model
    family."""
    weights_dir = Path(weights_dir)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    build_wan_models(weights_dir)
    build_tiny_loras(weights_dir)
    build_tiny_interpolators(weights_dir)
    build_tiny_annotators(weights_dir)
    for tracker in MASK_TRACKERS.values():  # one tiny model in every size's folder: any --mask-tracker loads
        build_tiny_tracker(tracker.path(weights_dir))
    build_safety_checker(AUXILIARY[SAFETY_CHECKER].path(weights_dir))
    build_prompt_expander(AUXILIARY[PROMPT_EXPANDER].path(weights_dir))
    return weights_dir
