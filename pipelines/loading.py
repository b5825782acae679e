"""Loading generation models from the weights directory, with one shared text encoder and VAE.

Every model folder is a complete diffusers ``WanVACEPipeline`` folder, but the 11 GB UMT5-XXL text encoder and the
VAE are the same for every Wan VACE model, so the folders link them to one place and this manager loads each
distinct component once (keyed by its resolved path) and builds pipelines around the shared modules. Models are
loaded on first use and the least recently used transformer is dropped when more than ``max_models`` are resident.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan, WanVACEPipeline, WanVACETransformer3DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from .interpolation import FrameInterpolator, load_interpolator
from .registry import MODELS

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (what the Wan models are trained and served in), fp32 on CPU where bf16 is slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class LoadedModel:
    """The modules of one model; ``pipeline()`` wraps them with a job's scheduler."""

    key: str
    tokenizer: PreTrainedTokenizerBase
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    transformer: WanVACETransformer3DModel
    transformer_2: WanVACETransformer3DModel | None
    boundary_ratio: float | None

    def pipeline(self, scheduler: SchedulerMixin) -> WanVACEPipeline:
        """A pipeline for one job. Cheap: it only registers the already loaded modules."""
        pipe = WanVACEPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            scheduler=scheduler,
            transformer=self.transformer,
            transformer_2=self.transformer_2,
            boundary_ratio=self.boundary_ratio,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


class ModelManager:
    """Loads models from ``weights_dir`` on demand and shares the components they have in common."""

    def __init__(
        self,
        weights_dir: Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_models: int = 2,
    ) -> None:
        self.weights_dir = Path(weights_dir)
        # Jobs report progress through their own hooks; the libraries' per-file bars would only clutter logs.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.max_models = max_models
        self._components: dict[tuple[str, Path], object] = {}
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._interpolators: dict[str, FrameInterpolator] = {}
        self._lock = threading.Lock()

    def model_dir(self, key: str) -> Path:
        return self.weights_dir / MODELS[key].folder

    def is_present(self, key: str) -> bool:
        """Whether the model's folder has a pipeline index (a full check is ``vace weights check``)."""
        return (self.model_dir(key) / "model_index.json").is_file()

    def loaded(self) -> list[str]:
        return list(self._models)

    def _shared(self, kind: str, path: Path) -> object:
        """Load a component once per distinct folder (symlinked folders resolve to the same key)."""
        cache_key = (kind, path.resolve())
        if cache_key not in self._components:
            log.info("loading %s from %s", kind, path.resolve())
            if kind == "tokenizer":
                module: object = AutoTokenizer.from_pretrained(path)
            elif kind == "text_encoder":
                module = UMT5EncoderModel.from_pretrained(path, torch_dtype=self.dtype).to(self.device).eval()
            else:  # the Wan VAE runs in fp32: its decoder is sensitive to reduced precision
                module = AutoencoderKLWan.from_pretrained(path, torch_dtype=torch.float32).to(self.device).eval()
            self._components[cache_key] = module
        return self._components[cache_key]

    def _transformer(self, path: Path) -> WanVACETransformer3DModel:
        log.info("loading transformer from %s", path)
        model = WanVACETransformer3DModel.from_pretrained(path, torch_dtype=self.dtype)
        return model.to(self.device).eval()

    def interpolator(self, kind: str) -> FrameInterpolator:
        """The RIFE or FILM interpolator, loaded once from ``weights_dir/interpolation``."""
        with self._lock:
            if kind not in self._interpolators:
                log.info("loading %s interpolator", kind)
                self._interpolators[kind] = load_interpolator(kind, self.weights_dir, self.device)  # type: ignore[arg-type]
            return self._interpolators[kind]

    def get(self, key: str) -> LoadedModel:
        """The loaded model ``key``, loading it (and evicting the least recently used) if needed."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            folder = self.model_dir(key)
            index_path = folder / "model_index.json"
            if not index_path.is_file():
                raise FileNotFoundError(
                    f"weights for {key} are missing: no {index_path} (run `vace weights download --models {key}`)"
                )
            index = json.loads(index_path.read_text())
            has_second = bool(index.get("transformer_2") and index["transformer_2"][0] is not None)
            while len(self._models) >= self.max_models:
                evicted, _ = self._models.popitem(last=False)
                log.info("evicting %s", evicted)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            model = LoadedModel(
                key=key,
                tokenizer=self._shared("tokenizer", folder / "tokenizer"),  # type: ignore[arg-type]
                text_encoder=self._shared("text_encoder", folder / "text_encoder"),  # type: ignore[arg-type]
                vae=self._shared("vae", folder / "vae"),  # type: ignore[arg-type]
                transformer=self._transformer(folder / "transformer"),
                transformer_2=self._transformer(folder / "transformer_2") if has_second else None,
                boundary_ratio=index.get("boundary_ratio"),
            )
            self._models[key] = model
            return model
