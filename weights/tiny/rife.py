"""Random-weight RIFE files in Practical-RIFE's release format, for tests, the demo and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.interpolation.rife import STATE_PREFIX, IFNet, IFNetConfig


def build_tiny_rife(path: Path, config: IFNetConfig | None = None, seed: int = 0) -> Path:
    """Write a random-weight ``flownet.pkl`` in Practical-RIFE's format: ``module.``-prefixed keys, real shapes.

    The default layout is the real 4.26 one (5.7 M parameters, 23 MB), so loading code and speed are the real ones;
    a smaller ``config`` keeps the key names and only shrinks widths.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = IFNet(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({STATE_PREFIX + k: v for k, v in net.state_dict().items()}, path)
    return path
