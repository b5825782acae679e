"""Manifest of the weights: where each folder of the weights directory comes from and what it must contain.

This is the one place that names the models, annotators and interpolators and says which folder and files each
uses: the loaders (``pipelines.loading``, ``preprocessors``, ``pipelines.interpolation``) take their paths from
these entries, ``weights/download.py`` fetches them, ``weights/check.py`` verifies them and ``weights/tiny`` builds
random ones in the same places. The layout itself is described in ``weights/LAYOUT.md``. Everything here is data;
sizes are approximate and only used for messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHARED_FOLDER = "wan-shared"
SHARED_COMPONENTS = ("text_encoder", "tokenizer", "vae")
RECORD_FILE = ".vace-files.json"  # per-folder size/sha256 record written by the downloader


@dataclass(frozen=True)
class Source:
    """Files taken from one Hugging Face hub repo (``allow_patterns`` as in ``snapshot_download``)."""

    repo_id: str
    allow_patterns: tuple[str, ...]
    revision: str = "main"
    # Files the repo only ships inside a .zip: after the download each name is taken out of the source's zip files
    # (the one member whose basename it is) into the entry folder under that name.
    extract: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class WeightEntry:
    """One folder of the weights directory.

    ``required`` are relative paths that must exist; each group in ``required_any`` needs at least one existing path
    (e.g. a single weights file or a sharded index). Annotators and interpolators (``EXTRAS``) are plain entries
    like this.
    """

    key: str
    folder: str
    sources: tuple[Source, ...] = ()
    approx_size_gb: float = 0.0
    required: tuple[str, ...] = ()
    required_any: tuple[tuple[str, ...], ...] = ()
    notes: str = ""

    def path(self, weights_dir: Path, *parts: str) -> Path:
        """The entry's folder under ``weights_dir``, or a file in it: where a loader reads it."""
        return Path(weights_dir, self.folder, *parts)


@dataclass(frozen=True, kw_only=True)
class ModelEntry(WeightEntry):
    """A diffusers WanVACEPipeline folder; text_encoder, tokenizer and vae are symlinks into ``wan-shared``.

    ``approx_size_gb`` counts the model's own files only (the shared folder is ~12 GB on top, once).
    """

    endpoint: str | None = None  # fal app id served by this model, None for an extra option
    two_experts: bool = False  # has transformer_2 (Wan2.2 A14B high/low-noise experts)
    boundary_ratio: float | None = None  # written into model_index.json when the repo lacks it
    uses_shared: bool = True


_DIFFUSERS_OWN = ("model_index.json", "scheduler/*", "transformer/*")

SHARED = WeightEntry(
    key=SHARED_FOLDER,
    folder=SHARED_FOLDER,
    sources=(Source("Wan-AI/Wan2.1-VACE-1.3B-diffusers", tuple(f"{c}/*" for c in SHARED_COMPONENTS)),),
    approx_size_gb=12.0,
    notes="UMT5-XXL text encoder (~11.4 GB bf16), tokenizer, Wan2.1 VAE (~0.5 GB); same files as in the 14B repo.",
)

MODELS: dict[str, ModelEntry] = {
    m.key: m
    for m in (
        ModelEntry(
            key="wan-vace-14b",
            folder="wan2.1-vace-14b",
            endpoint="fal-ai/wan-vace-14b",
            sources=(Source("Wan-AI/Wan2.1-VACE-14B-diffusers", _DIFFUSERS_OWN),),
            approx_size_gb=70.0,
            notes="Wan2.1 VACE 14B; transformer stored as fp32 shards.",
        ),
        ModelEntry(
            key="wan-22-vace-fun-a14b",
            folder="wan2.2-vace-fun-a14b",
            endpoint="fal-ai/wan-22-vace-fun-a14b",
            sources=(Source("linoyts/Wan2.2-VACE-Fun-14B-diffusers", (*_DIFFUSERS_OWN, "transformer_2/*")),),
            two_experts=True,
            boundary_ratio=0.875,
            approx_size_gb=70.0,
            notes=(
                "Wan2.2 VACE-Fun A14B, two experts (community diffusers conversion; ~70 GB in bf16, about twice that "
                "if stored fp32). Can also be produced from alibaba-pai/Wan2.2-VACE-Fun-A14B with diffusers' "
                "scripts/convert_wan_to_diffusers.py --model_type Wan2.2-VACE-Fun-14B."
            ),
        ),
        ModelEntry(
            key="wan-vace-1.3b",
            folder="wan2.1-vace-1.3b",
            endpoint=None,
            sources=(Source("Wan-AI/Wan2.1-VACE-1.3B-diffusers", _DIFFUSERS_OWN),),
            approx_size_gb=7.0,
            notes="Wan2.1 VACE 1.3B, the light option (480p).",
        ),
    )
}

# Files the loaders open by name, each listed once here and required by its entry below.
DWPOSE_DETECTOR_FILE = "yolox_l.onnx"
DWPOSE_ESTIMATOR_FILE = "dw-ll_ucoco_384.onnx"
MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
OPENPOSE_FILE = "body_pose_model.pth"
RIFE_FILE = "flownet.pkl"
FILM_FILE = "film_net_fp32.pt"

# Annotators (control-video makers for preprocess=true) and frame interpolators: plain entries with `required` files.
# Their keys are the names the API and the CLI take (`annotator`, `interpolator_model`).
DWPOSE = WeightEntry(
    key="dwpose",
    folder="annotators/dwpose",
    sources=(Source("yzd-v/DWPose", (DWPOSE_DETECTOR_FILE, DWPOSE_ESTIMATOR_FILE)),),
    approx_size_gb=0.35,
    required=(DWPOSE_DETECTOR_FILE, DWPOSE_ESTIMATOR_FILE),
    notes=(
        "DWPose as VACE's pose annotator: YOLOX-L person detector + RTMPose-L whole-body 384x288 "
        "(onnxruntime). Same files as ali-vilab/VACE-Annotators pose/."
    ),
)
MIDAS = WeightEntry(
    key="midas",
    folder="annotators/midas",
    sources=(Source("lllyasviel/Annotators", (MIDAS_FILE,)),),
    approx_size_gb=0.49,
    required=(MIDAS_FILE,),
    notes=(
        "MiDaS DPT-Hybrid, VACE's depth annotator (controlnet-aux DPTDepthModel). Same file as VACE-Annotators depth/."
    ),
)
OPENPOSE = WeightEntry(
    key="openpose",
    folder="annotators/openpose",
    sources=(Source("lllyasviel/Annotators", (OPENPOSE_FILE,)),),
    approx_size_gb=0.2,
    required=(OPENPOSE_FILE,),
    notes="OpenPose body (controlnet-aux), alternative pose annotator.",
)
DEPTH_ANYTHING = WeightEntry(
    key="depth_anything_v2",
    folder="annotators/depth_anything_v2",
    sources=(Source("depth-anything/Depth-Anything-V2-Small-hf", ("config.json", "model.safetensors")),),
    approx_size_gb=0.1,
    required=("config.json",),
    required_any=(("model.safetensors",),),
    notes="Depth Anything V2 Small (Apache-2.0), alternative depth annotator; VACE's depthv2 uses ViT-L.",
)
RIFE = WeightEntry(
    key="rife",
    folder="interpolation/rife",
    sources=(Source("hzwer/RIFE", ("RIFEv4.26_0921.zip",), extract=(RIFE_FILE,)),),
    approx_size_gb=0.023,
    required=(RIFE_FILE,),
    notes="Practical-RIFE 4.26 (MIT). The hub holds a zip; the downloader extracts its */flownet.pkl here.",
)
FILM = WeightEntry(
    key="film",
    folder="interpolation/film",
    # Pinned at the commit that public setups (ComfyUI provisioning scripts) download; which of the port's layouts
    # it holds is not stated anywhere, so the loader tells the layout from the file and `vace weights check` says it.
    sources=(Source("nguu/film-pytorch", (FILM_FILE,), revision="887b2c42bebcb323baf6c3b6d59304135699b575"),),
    approx_size_gb=0.14,
    required=(FILM_FILE,),
    notes=(
        "FILM film_net (Google, Apache-2.0) as TorchScript from the dajes/frame-interpolation-pytorch port "
        "(community mirror; also on that project's GitHub releases). Any of the port's layouts v1.0.0-v1.0.2 loads; "
        "v1.0.0 makes midpoints only (1 or 3 frames between two)."
    ),
)
EXTRAS: dict[str, WeightEntry] = {e.key: e for e in (DWPOSE, MIDAS, OPENPOSE, DEPTH_ANYTHING, RIFE, FILM)}

# Mask trackers: SAM2.1 in transformers' format (``Sam2VideoModel``), which follow an inpainting job's mask image
# through the clip. One entry per size; the server's ``--mask-tracker`` picks one (small by default: close to
# base-plus on SAM2's benchmarks at half its size, and next to a 14B video model its cost hardly counts). Each hub
# repo also holds the original ``.pt`` checkpoint, which is not fetched. The processor's settings are in
# ``processor_config.json`` (where ``save_pretrained`` writes them all) and, in the hub's repos, also in
# ``*preprocessor_config.json``.
_SAM2_FILES = ("config.json", "model.safetensors", "processor_config.json", "*preprocessor_config.json")
MASK_TRACKERS: dict[str, WeightEntry] = {
    e.key: e
    for e in (
        WeightEntry(
            key=f"sam2.1-hiera-{size}",
            folder=f"trackers/sam2.1-hiera-{size}",
            sources=(Source(f"facebook/sam2.1-hiera-{size}", _SAM2_FILES),),
            approx_size_gb=size_gb,
            required=("config.json", "processor_config.json"),
            required_any=(("model.safetensors",),),
            notes=f"SAM2.1 Hiera-{size} video segmentation (Meta, Apache-2.0), transformers format: tracks an "
            "inpainting mask image through the clip.",
        )
        for size, size_gb in (("tiny", 0.16), ("small", 0.18), ("base-plus", 0.32), ("large", 0.9))
    )
}
DEFAULT_MASK_TRACKER = "sam2.1-hiera-small"

# The safety checker and the local prompt-expansion LM: each serves an optional job stage (enable_safety_checker,
# enable_prompt_expansion with `--prompt-expander local`), so they are fetched only when named.
SAFETY_CHECKER = "safety-checker"
PROMPT_EXPANDER = "prompt-expander"
AUXILIARY: dict[str, WeightEntry] = {
    e.key: e
    for e in (
        WeightEntry(
            key=SAFETY_CHECKER,
            folder="safety/nsfw_image_detection",
            sources=(
                Source(
                    "Falconsai/nsfw_image_detection", ("config.json", "model.safetensors", "preprocessor_config.json")
                ),
            ),
            approx_size_gb=0.34,
            required=("config.json", "preprocessor_config.json"),
            required_any=(("model.safetensors",),),
            notes=(
                "ViT-B/16 image classifier with labels normal / nsfw (Apache-2.0), loaded with transformers' "
                "AutoModelForImageClassification; any classifier with an 'nsfw' or 'unsafe' label fits here."
            ),
        ),
        WeightEntry(
            key=PROMPT_EXPANDER,
            folder="prompt_expander/qwen2.5-1.5b-instruct",
            sources=(
                Source("Qwen/Qwen2.5-1.5B-Instruct", ("*.json", "model*.safetensors", "merges.txt", "vocab.json")),
            ),
            approx_size_gb=3.1,
            required=("config.json", "tokenizer_config.json"),
            required_any=(("model.safetensors", "model.safetensors.index.json"), ("tokenizer.json",)),
            notes=(
                "Qwen2.5 1.5B Instruct (Apache-2.0), the local prompt expander (transformers causal LM with a chat "
                "template); small enough to sit next to a 14B video model. Any chat LM folder can replace it."
            ),
        ),
    )
}

# LoRAs a request can name live under loras/ (names are their paths there without ``.safetensors``). The
# step-distillation LoRAs of the fast path (README, "LoRAs") are optional entries, fetched only when named.
LORAS_FOLDER = "loras"
LIGHTX2V_WAN21 = "lightx2v-wan21-14b"
LIGHTNING_WAN22 = "lightning-wan22-a14b"
_LIGHTX2V_WAN21_FILE = "loras/Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"
_LIGHTNING_DIR = "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1"
_LIGHTNING_FILES = (f"{_LIGHTNING_DIR}/high_noise_model.safetensors", f"{_LIGHTNING_DIR}/low_noise_model.safetensors")
DISTILL_LORAS: dict[str, WeightEntry] = {
    e.key: e
    for e in (
        WeightEntry(
            key=LIGHTX2V_WAN21,
            folder=f"{LORAS_FOLDER}/lightx2v",
            sources=(Source("lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v", (_LIGHTX2V_WAN21_FILE,)),),
            approx_size_gb=0.63,
            required=(_LIGHTX2V_WAN21_FILE,),
            notes=(
                "LightX2V's step- and CFG-distilled LoRA for Wan2.1 14B (rank 64, Apache-2.0): 4 steps, guidance 1, "
                "shift 5. Request name: lightx2v/loras/Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64."
            ),
        ),
        WeightEntry(
            key=LIGHTNING_WAN22,
            folder=f"{LORAS_FOLDER}/lightning",
            sources=(Source("lightx2v/Wan2.2-Lightning", _LIGHTNING_FILES),),
            approx_size_gb=1.2,
            required=_LIGHTNING_FILES,
            notes=(
                "Wan2.2-Lightning 4-step LoRA pair for the A14B experts (rank 64, Apache-2.0): high_noise_model into "
                "transformer (high), low_noise_model into transformer_2 (low). Request names: "
                f"lightning/{_LIGHTNING_DIR}/high_noise_model and .../low_noise_model."
            ),
        ),
    )
}

# Which extras each feature can use; the first annotator of a task is VACE's default, and the server's unless
# configured otherwise. The alternatives are only reported by `check`, never demanded.
TASK_ANNOTATORS: dict[str, tuple[str, ...]] = {
    "pose": (DWPOSE.key, OPENPOSE.key),
    "depth": (MIDAS.key, DEPTH_ANYTHING.key),
}
DEFAULT_ANNOTATORS: dict[str, str] = {task: keys[0] for task, keys in TASK_ANNOTATORS.items()}
INTERPOLATORS: tuple[str, ...] = (RIFE.key, FILM.key)

# Keys whose spelling changed; `vace weights download --models` still takes the old one.
RENAMED_KEYS: dict[str, str] = {"depth-anything-v2": DEPTH_ANYTHING.key}

ENTRIES: dict[str, WeightEntry] = {
    SHARED.key: SHARED,
    **MODELS,
    **EXTRAS,
    **MASK_TRACKERS,
    **AUXILIARY,
    **DISTILL_LORAS,
}

# What `vace weights download` fetches by default: the models behind the fal endpoints, each task's default
# annotator, both interpolators and the default mask tracker (the shared text encoder / tokenizer / VAE come with the
# models).
DEFAULT_DOWNLOAD: tuple[str, ...] = (
    *(m.key for m in MODELS.values() if m.endpoint),
    *DEFAULT_ANNOTATORS.values(),
    *INTERPOLATORS,
    DEFAULT_MASK_TRACKER,
)

# Weights file names, single-file and sharded, per library.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_COMPONENT_WEIGHTS = {
    "transformer": _DIFFUSERS_WEIGHTS,
    "transformer_2": _DIFFUSERS_WEIGHTS,
    "vae": _DIFFUSERS_WEIGHTS,
    "text_encoder": _TRANSFORMERS_WEIGHTS,
}
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def components(entry: WeightEntry) -> tuple[str, ...]:
    """Component subfolders of a diffusers model folder (or of the shared folder); () for other entries."""
    if isinstance(entry, ModelEntry):
        own = ("scheduler", "transformer") + (("transformer_2",) if entry.two_experts else ())
        return own + SHARED_COMPONENTS
    if entry.key == SHARED.key:
        return SHARED_COMPONENTS
    return ()


def _component_paths(name: str) -> tuple[list[str], list[tuple[str, ...]]]:
    if name == "scheduler":
        return ["scheduler/scheduler_config.json"], []
    if name == "tokenizer":
        return ["tokenizer/tokenizer_config.json"], [tuple(f"tokenizer/{f}" for f in _TOKENIZER_FILES)]
    return [f"{name}/config.json"], [tuple(f"{name}/{f}" for f in _COMPONENT_WEIGHTS[name])]


def required_paths(entry: WeightEntry) -> list[str]:
    """Relative paths (to the entry's folder) that must exist: model_index.json, every component's config file."""
    paths = ["model_index.json"] if isinstance(entry, ModelEntry) else []
    for name in components(entry):
        paths += _component_paths(name)[0]
    return paths + list(entry.required)


def required_any(entry: WeightEntry) -> list[tuple[str, ...]]:
    """Groups of relative paths of which at least one must exist (weights files, tokenizer vocabulary)."""
    groups: list[tuple[str, ...]] = []
    for name in components(entry):
        groups += _component_paths(name)[1]
    return groups + list(entry.required_any)


def canonical_key(key: str) -> str:
    """``key`` in its current spelling (see ``RENAMED_KEYS``)."""
    return RENAMED_KEYS.get(key, key)
