"""A tiny SAM2.1 video model in transformers' format: the mask tracker behind inpainting's ``mask_image_url``.

``Sam2VideoModel.save_pretrained`` and ``Sam2VideoProcessor.save_pretrained`` write the folder as transformers writes
any SAM2 checkpoint, and ``preprocessors.mask_tracking`` loads it with ``from_pretrained`` like the hub's
facebook/sam2.1-hiera-* folders. The tiny config keeps SAM2's whole structure (Hiera stages with a global-attention
block, the FPN neck, memory attention, memory encoder and object pointers) at a 64x64 input; two widths stay at the
values the architecture assumes: the memory is 64 channels wide (the memory attention's cross-attention takes 64
input features whatever the config says) and the hidden size is larger than it (object pointers are split into
memory-sized tokens). ``real_config`` gives the real sizes' architecture for the benchmark (random weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

TINY_SIZE = 64  # the square input SAM2 resizes every frame to (1024 in the real models)
HIDDEN = 128
MEMORY = 64  # the width the memory attention's cross-attention is built for
# The Hiera backbone of each SAM2.1 size (the rest of the model is the same for all): blocks per stage, the global
# attention blocks, the first stage's width and heads (doubled per stage) and the window sizes.
HIERA: dict[str, dict[str, Any]] = {
    "tiny": {"blocks_per_stage": [1, 2, 7, 2], "global_attention_blocks": [5, 7, 9]},
    "small": {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]},
    "base-plus": {
        "hidden_size": 112,
        "num_attention_heads": 2,
        "blocks_per_stage": [2, 3, 16, 3],
        "embed_dim_per_stage": [112, 224, 448, 896],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "global_attention_blocks": [12, 16, 20],
        "window_positional_embedding_background_size": [14, 14],
    },
    "large": {
        "hidden_size": 144,
        "num_attention_heads": 2,
        "blocks_per_stage": [2, 6, 36, 4],
        "embed_dim_per_stage": [144, 288, 576, 1152],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "global_attention_blocks": [23, 33, 43],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 16, 8],
    },
}


def real_config(size: str) -> Sam2VideoConfig:
    """The architecture of SAM2.1 Hiera-``size`` (tiny, small, base-plus, large) at 1024x1024, for random weights.
    Only the backbone differs between the sizes; the channel list follows its stage widths."""
    backbone = {"model_type": "sam2_hiera_det_model", **HIERA[size]}
    widths = backbone.get("embed_dim_per_stage", [96, 192, 384, 768])
    return Sam2VideoConfig(vision_config={"backbone_config": backbone, "backbone_channel_list": widths[::-1]})


def tiny_config() -> Sam2VideoConfig:
    """SAM2's structure at a 64x64 input and small widths: about a million parameters."""
    size = TINY_SIZE
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 8,
        "num_attention_heads": 1,
        "image_size": [size, size],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [8, 16, 32, 64],
        "num_attention_heads_per_stage": [1, 1, 1, 1],
        "window_size_per_stage": [4, 4, 2, 2],
        "global_attention_blocks": [3],
        "window_positional_embedding_background_size": [2, 2],
    }
    features = [[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]]
    return Sam2VideoConfig(
        vision_config={
            "backbone_config": backbone,
            "backbone_channel_list": [64, 32, 16, 8],
            "backbone_feature_sizes": features,
            "fpn_hidden_size": HIDDEN,
        },
        prompt_encoder_config={"hidden_size": HIDDEN, "image_size": size, "patch_size": 16},
        mask_decoder_config={"hidden_size": HIDDEN, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        image_size=size,
        memory_attention_hidden_size=HIDDEN,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=features[-1],
        memory_encoder_hidden_size=HIDDEN,
        memory_encoder_output_channels=MEMORY,
        mask_downsampler_embed_dim=HIDDEN,
        memory_fuser_num_layers=1,
        memory_fuser_embed_dim=HIDDEN,
        memory_fuser_intermediate_dim=64,
    )


def processor_for(size: int) -> Sam2VideoProcessor:
    """SAM2's processor (ImageNet normalisation, frames resized to ``size`` squared, mask logits at a quarter)."""
    return Sam2VideoProcessor(
        Sam2ImageProcessor(size={"longest_edge": size}, mask_size={"longest_edge": size // 4}),
        Sam2VideoVideoProcessor(size={"height": size, "width": size}),
        target_size=size,
    )


def build_tiny_tracker(folder: Path, seed: int = 0) -> Path:
    """Write a random-weight ``Sam2VideoModel`` and its processor into ``folder`` with ``save_pretrained``.

    SAM2 first asks whether the object is in the frame at all (its object score) and returns an empty mask where it
    is not; left random, that answer would be no for some seeds on every frame, and the tracked masks trivially
    empty. The score head's last bias is raised so the random model always sees the object, and its masks are
    its own random logits."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2VideoModel(tiny_config()).eval()
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    model.save_pretrained(folder)
    processor_for(TINY_SIZE).save_pretrained(folder)
    return folder
