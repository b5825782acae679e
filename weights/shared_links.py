"""Link a model folder's text encoder, tokenizer and VAE to the one shared copy in ``wan-shared/``.

Every Wan VACE model uses the same ~12 GB of shared components; relative symlinks keep each model folder a complete
diffusers folder (it loads as-is with ``from_pretrained``) while the files exist once. The downloader, the tiny
builder and the GPU benchmark all lay folders out this way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipelines.manifest import SHARED_COMPONENTS, SHARED_FOLDER


def link_shared(folder: Path, weights_dir: Path, *, replace_copies: bool = False) -> list[str]:
    """Make ``folder/<component>`` relative symlinks to ``wan-shared/<component>``; returns what was done.

    An existing link is re-pointed and an empty folder replaced. A non-empty folder or a file is kept (someone put
    files there) unless ``replace_copies``, which a builder that has just written its own copies there asks for.
    """
    notes = []
    for name in SHARED_COMPONENTS:
        link = folder / name
        target = os.path.relpath(weights_dir / SHARED_FOLDER / name, folder)
        if link.is_symlink():
            if os.readlink(link) == target:
                continue
            link.unlink()
        elif link.is_dir():
            if any(link.iterdir()) and not replace_copies:
                notes.append(f"keeping the non-empty folder {name}/ instead of linking {target}")
                continue
            shutil.rmtree(link)
        elif link.exists():
            if not replace_copies:
                notes.append(f"{name} is a file, not linking {target}")
                continue
            link.unlink()
        os.symlink(target, link, target_is_directory=True)
        notes.append(f"{name} -> {target}")
    return notes
