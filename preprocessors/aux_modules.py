"""controlnet-aux's annotator modules without the package's ``__init__``.

``controlnet_aux/__init__.py`` imports every annotator it ships (SAM, TEED, LeReS, MediaPipe face, ...), and Python
runs a package's ``__init__`` before any of its submodules. That costs seconds and prints a wall of warnings from
code we never run (timm's moved-module notices, a TorchScript deprecation, "mediapipe is not installed", registry
overwrites). We use three of its modules (MiDaS DPT, OpenPose, the DWPose drawing utilities), so ``aux_module``
registers the package without running its ``__init__`` and imports only the submodule asked for; its relative
imports (``..util``) resolve as usual. When something else has already imported the whole package, that is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

PACKAGE = "controlnet_aux"


def aux_module(name: str) -> ModuleType:
    """The module ``controlnet_aux.<name>`` (e.g. ``midas.midas.dpt_depth``), imported on its own."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {PACKAGE!r} (pip install controlnet-aux)", name=PACKAGE)
        sys.modules.setdefault(PACKAGE, importlib.util.module_from_spec(spec))
    return importlib.import_module(f"{PACKAGE}.{name}")
