"""A tiny safety checker: the image classifier behind ``enable_safety_checker``, in Falconsai's format."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor


def build_safety_checker(folder: Path) -> None:
    """A 32x32-input ViT with Falconsai's labels and preprocessing (mean and std 0.5). Its last bias favours
    ``normal``: random weights would flag at random, and a test forces a flag by flipping that bias."""
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, -3.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
