"""Our edit conditioning beside VACE's own annotators, on the same frames (run by hand; CI runs the golden copy).

    PYTHONPATH=.:PYCOCOTOOLS_DIR python tests/vace_parity.py --vace VACE_CLONE [--write tests/data/vace_parity.npz]

VACE_CLONE is a checkout of ali-vilab/VACE (not part of this repository); only its annotator modules are imported
(``vace/annotators/{outpainting,inpainting,frameref}.py`` and the ``utils.py`` they import, which needs
``pycocotools``), not the package ``__init__`` that pulls in every model. Each case runs VACE's annotator and our
code path (``pipelines.outpaint``/``masks`` -> ``build_conditioning``) on the same frames and prints whether the
conditioning video and mask are equal, or differ exactly as documented (``docs/PARITY.md``). ``--write`` stores the
inputs and VACE's outputs, which ``tests/test_vace_parity.py`` compares our code against without VACE.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.conditioning import GREY, build_conditioning, grey_frames
from pipelines.masks import fit_masks
from pipelines.outpaint import Expansion, Side, expansion, outpaint_placement

VACE_SIDES: dict[Side, str] = {"left": "left", "right": "right", "top": "up", "bottom": "down"}


@dataclass(frozen=True)
class Case:
    """One comparison: the annotator, its parameters and the input frames (and mask)."""

    name: str
    kind: str  # "outpainting", "inpainting" or "frameref"
    params: dict[str, Any]
    frames: list[np.ndarray]
    mask: np.ndarray | None = None


def _frames(seed: int, n: int, width: int, height: int) -> list[np.ndarray]:
    """Noise-like frames from integer hashing: every pixel differs from its neighbours (a misplaced paste cannot
    match), and the same on every machine and NumPy version (no random generator stream involved)."""
    i, y, x, c = (a.astype(np.uint64) for a in np.ogrid[:n, :height, :width, :3])
    v = (
        x * np.uint64(2654435761)
        + y * np.uint64(40503)
        + c * np.uint64(2246822519)
        + (i + np.uint64(seed)) * np.uint64(3266489917)
    )
    v = (v ^ (v >> np.uint64(13))) * np.uint64(1274126177)
    return list(((v >> np.uint64(16)) % np.uint64(256)).astype(np.uint8))


def cases() -> list[Case]:
    """Sizes, sides and ratios chosen to cover VACE's rounding branches: canvases that are and are not multiples of
    16, one side, opposite sides, all four, ratios whose ``int()`` truncates, and masks hard and soft."""
    out = []
    for w, h, sides, ratio, keep in [
        (32, 16, ["left", "right"], 0.25, 1),
        (32, 32, ["left", "right", "top", "bottom"], 0.25, 1),
        (32, 32, ["top"], 0.5, 1),
        (37, 23, ["left", "bottom"], 0.3, 1),
        (41, 29, ["right"], 0.77, 1),
        (30, 18, ["left", "right", "top", "bottom"], 1.0, 1),
        (50, 30, ["left", "top"], 0.3, 16),
        (45, 27, ["right", "left", "bottom"], 0.2, 16),
        (50, 30, ["left"], 0.3, 16),
        (40, 20, ["top", "bottom"], 0.25, 16),
    ]:
        out.append(
            Case(
                f"outpaint {w}x{h} {'+'.join(sides)} {ratio:g} pad{keep}",
                "outpainting",
                {"sides": sides, "ratio": ratio, "keep_padding_ratio": keep},
                _frames(len(out), 1, w, h),
            )
        )
    for w, h, soft in [(32, 16, False), (33, 21, False), (40, 24, True)]:
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 255
        if soft:  # a feathered edge: every level from 0 to 255 somewhere
            mask = np.clip(np.abs(np.arange(w)[None, :] - w / 2) * -12 + 255, 0, 255).astype(np.uint8)
            mask = np.repeat(mask, h, axis=0)
        out.append(
            Case(
                f"inpaint mask {w}x{h} {'soft' if soft else 'hard'}", "inpainting", {}, _frames(len(out), 2, w, h), mask
            )
        )
    out.append(Case("frameref firstlastframe 40x24", "frameref", {"expand_num": 3}, _frames(len(out), 2, 40, 24)))
    return out


# --- VACE's side --------------------------------------------------------------------------------------------------


def load_annotators(vace_root: Path) -> types.ModuleType:
    """VACE's annotator modules as a package of their own, without running ``vace/annotators/__init__.py``."""
    folder = vace_root / "vace" / "annotators"
    package = types.ModuleType("vace_annotators")
    package.__path__ = [str(folder)]
    sys.modules["vace_annotators"] = package
    for name in ("outpainting", "inpainting", "frameref"):
        spec = importlib.util.spec_from_file_location(f"vace_annotators.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
    return package


def run_vace(annotators: types.ModuleType, case: Case) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """VACE's conditioning frames and masks for ``case``, with its video configs (``video_preproccess.py``)."""
    if case.kind == "outpainting":
        anno = annotators.outpainting.OutpaintingVideoAnnotator(
            {"RETURN_MASK": True, "KEEP_PADDING_RATIO": case.params["keep_padding_ratio"], "MASK_COLOR": "gray"}
        )
        out = anno.forward(
            case.frames, expand_ratio=case.params["ratio"], direction=[VACE_SIDES[s] for s in case.params["sides"]]
        )
        return out["frames"], out["masks"]
    if case.kind == "inpainting":
        anno = annotators.inpainting.InpaintingVideoAnnotator({"MODE": "mask"})
        out = anno.forward(frames=case.frames, mask=case.mask, mode="mask")
        return out["frames"], out["masks"]
    anno = annotators.frameref.FrameRefExpandAnnotator({"MODE": "firstlastframe"})
    out = anno.forward(
        image=case.frames[0], image_2=case.frames[1], mode="firstlastframe", expand_num=case.params["expand_num"]
    )
    return out["frames"], out["masks"]


# --- ours ---------------------------------------------------------------------------------------------------------


def _ceil(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def run_ours(case: Case) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Our conditioning for ``case`` at VACE's size (the canvas rounded up to ``keep_padding_ratio``, as VACE does;
    our jobs round to 16, which ``outpaint_size`` decides)."""
    height, width = case.frames[0].shape[:2]
    if case.kind == "outpainting":
        exp: Expansion = expansion(width, height, case.params["sides"], case.params["ratio"])
        keep = case.params["keep_padding_ratio"]
        place = outpaint_placement(exp, 1.0, _ceil(exp.canvas_w, keep), _ceil(exp.canvas_h, keep))
        frames, masks = list(place.render_all(case.frames)), [place.mask()] * len(case.frames)
        width, height = place.width, place.height
    elif case.kind == "inpainting":
        frames = case.frames
        masks = list(fit_masks([case.mask] * len(case.frames), (width, height), width, height))
    else:
        n = case.params["expand_num"] + 2
        cond = build_conditioning(
            grey_frames(n, width, height),
            width,
            height,
            first_frame=Image.fromarray(case.frames[0]),
            last_frame=Image.fromarray(case.frames[1]),
        )
        return [np.asarray(v) for v in cond.video], [np.asarray(m) for m in cond.mask]
    cond = build_conditioning(frames, width, height, masks=masks)
    return [np.asarray(v) for v in cond.video], [np.asarray(m) for m in cond.mask]


# --- the comparison -----------------------------------------------------------------------------------------------


def expected_difference(case: Case, vace_masks: list[np.ndarray]) -> str | None:
    """Why ours may differ from VACE's output for ``case`` (None: it must be equal), checked by ``compare``."""
    if case.kind == "frameref":
        return "grey"  # VACE's frame extension greys with 127.5 (a float frame); ours is uint8 128
    if case.kind == "inpainting" and ((case.mask > 0) & (case.mask < 128)).any():
        return "soft"  # VACE greys every pixel above 0; ours (and VACE's model) what is at least half white
    if case.kind == "outpainting":
        exp = expansion(case.frames[0].shape[1], case.frames[0].shape[0], case.params["sides"], case.params["ratio"])
        height, width = vace_masks[0].shape
        unchosen = (width > exp.canvas_w and exp.left + exp.right == 0) or (
            height > exp.canvas_h and exp.top + exp.bottom == 0
        )
        if unchosen:
            return "unchosen"  # VACE puts the rounding on the right/bottom, grey yet marked keep; ours centres it
    return None


def compare(
    case: Case, ours: tuple[list[np.ndarray], list[np.ndarray]], vace: tuple[list[np.ndarray], list[np.ndarray]]
) -> str:
    """ "equal", or the documented difference when it is exactly that; raises AssertionError otherwise."""
    (our_frames, our_masks), (vace_frames, vace_masks) = ours, vace
    assert len(our_frames) == len(vace_frames) and len(our_masks) == len(vace_masks), case.name
    why = expected_difference(case, vace_masks)
    ours_v, vace_v = np.stack(our_frames).astype(np.float64), np.stack(vace_frames).astype(np.float64)
    ours_m, vace_m = np.stack(our_masks).astype(np.float64), np.stack(vace_masks).astype(np.float64)
    if why is None:
        assert ours_v.shape == vace_v.shape and np.array_equal(ours_v, vace_v), f"{case.name}: frames differ"
        assert np.array_equal(ours_m, vace_m), f"{case.name}: masks differ"
        return "equal"
    if why == "grey":
        assert np.array_equal(ours_m, vace_m), f"{case.name}: masks differ"
        diff = np.abs(ours_v - vace_v)
        assert diff.max() == 0.5 and np.array_equal(diff == 0.5, vace_v == 127.5), f"{case.name}: not just the grey"
        return "differs as documented: middle frames 128 here, 127.5 in VACE (masks equal)"
    if why == "soft":
        hard = (case.mask == 0) | (case.mask >= 128)
        assert np.array_equal(ours_v[:, hard], vace_v[:, hard]) and np.array_equal(ours_m[:, hard], vace_m[:, hard])
        soft = ~hard
        assert (vace_m[:, soft] == 255).all() and (ours_m[:, soft] == 0).all(), f"{case.name}: soft mask"
        assert (vace_v[:, soft] == GREY).all(), f"{case.name}: VACE greys soft pixels"
        return f"differs as documented: {int(soft.sum())} soft-edge pixels (1..127) kept here, generated in VACE"
    # "unchosen": the same canvas and the source at the same place on the chosen axis; on the axis nobody chose, the
    # source sits at 0 in VACE with the rounding pixels after it (grey, yet kept where the source's columns are),
    # centred here (grey, generated).
    assert ours_v.shape == vace_v.shape, f"{case.name}: canvas size"
    height, width = case.frames[0].shape[:2]
    vertical = vace_m.shape[1] > height and "top" not in case.params["sides"] and "bottom" not in case.params["sides"]
    if not vertical:  # the same checks on the transposed arrays
        ours_v, vace_v, ours_m, vace_m = (a.swapaxes(1, 2) for a in (ours_v, vace_v, ours_m, vace_m))
        height = width
    extra = vace_m.shape[1] - height
    start = extra // 2
    assert np.array_equal(ours_v[:, start : start + height], vace_v[:, :height]), f"{case.name}: source"
    assert np.array_equal(ours_m[:, start : start + height], vace_m[:, :height]), f"{case.name}: mask"
    rest = np.ones(vace_m.shape[1], bool)
    rest[start : start + height] = False
    assert (ours_v[:, rest] == GREY).all() and (ours_m[:, rest] == 255).all(), f"{case.name}: our rounding"
    # VACE: grey pixels there, under its keep rectangle stretched over them (the mask as in the source's last line)
    assert (vace_v[:, height:] == GREY).all() and (vace_m[:, height:] == vace_m[:, height - 1 : height]).all()
    return (
        f"differs as documented: the {extra} rounding {'rows' if vertical else 'columns'} of the unchosen axis "
        "are split around the source and generated here, after it and kept (grey) in VACE"
    )


def save(path: Path, results: list[tuple[Case, tuple[list[np.ndarray], list[np.ndarray]]]]) -> None:
    """VACE's outputs per case name, for the CI test (``tests/test_vace_parity.py``, which rebuilds the inputs with
    ``cases()``). Frames are uint8 but frameref's, which hold 127.5 (float16 stores it and 0..255 exactly)."""
    arrays: dict[str, np.ndarray] = {}
    for case, (frames, masks) in results:
        stacked = np.stack(frames)
        arrays[f"{case.name}/frames"] = stacked if stacked.dtype == np.uint8 else stacked.astype(np.float16)
        arrays[f"{case.name}/masks"] = np.stack(masks).astype(np.uint8)
    np.savez_compressed(path, **arrays)


def load(path: Path) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """``save``'s VACE outputs per case name."""
    data = np.load(path)
    names = {key.rsplit("/", 1)[0] for key in data.files}
    return {name: (list(data[f"{name}/frames"]), list(data[f"{name}/masks"])) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vace", type=Path, required=True, help="a checkout of ali-vilab/VACE")
    parser.add_argument("--write", type=Path, help="store the inputs and VACE's outputs here (.npz)")
    args = parser.parse_args(argv)
    annotators = load_annotators(args.vace)
    results = []
    for case in cases():
        vace = run_vace(annotators, case)
        print(f"{case.name:45s} {compare(case, run_ours(case), vace)}")
        results.append((case, vace))
    if args.write:
        save(args.write, results)
        print(f"wrote {args.write} ({args.write.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
