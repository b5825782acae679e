"""Frame interpolation (RIFE, FILM) on tiny weights in the real formats, and the temporal planner. CPU, small frames."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from pipelines.frame_plan import NATIVE_FRAMES, frames_to_generate, max_factor, plan_temporal
from pipelines.interpolation import FrameInterpolator, load_interpolator, weights_path
from pipelines.interpolation.film import (
    CURRENT_LAYOUT,
    _midpoint_rounds,
    film_frames_between,
    film_state_keys,
    load_film,
)
from pipelines.interpolation.rife import IFNetConfig, load_rife, rife_frames_between
from weights.tiny import build_tiny_interpolators
from weights.tiny.film import FILMNet, build_tiny_film
from weights.tiny.rife import build_tiny_rife

H, W = 48, 64  # not a multiple of 64 in height: exercises pad and crop
LAYOUTS = ("v1.0.0", "v1.0.1", "v1.0.2")
# The frames (target, left, right) that the port's inference.py makes, in its order, measured by running it (v1.0.2
# tag) with a stand-in model that records each call: float32 ties put 2/3 first at n = 2 and 5/6 before 1/6 at n = 5.
PORT_ORDER = {
    1: [(1, 0, 2)],
    2: [(2, 0, 3), (1, 0, 2)],
    3: [(2, 0, 4), (1, 0, 2), (3, 2, 4)],
    4: [(2, 0, 5), (1, 0, 2), (4, 2, 5), (3, 2, 4)],
    5: [(3, 0, 6), (5, 3, 6), (4, 3, 5), (1, 0, 3), (2, 1, 3)],
}
SMALL_RIFE = IFNetConfig(head_width=8, feature_channels=4, block_widths=(16, 16, 8, 8, 8))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interp-weights")
    build_tiny_interpolators(root)
    return root


@pytest.fixture(scope="module", params=["rife", "film"])
def interpolator(request: pytest.FixtureRequest, weights_dir: Path) -> FrameInterpolator:
    return load_interpolator(request.param, weights_dir, "cpu", batch_size=2)


def make_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]  # a pattern moving right


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_exact_counts_and_original_frames_unchanged(interpolator: FrameInterpolator, k: int) -> None:
    frames = make_frames(4)
    copies = [f.copy() for f in frames]
    out = list(interpolator.interpolate(iter(frames), k))
    assert len(out) == (len(frames) - 1) * (k + 1) + 1
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in out)
    for i, (frame, copy) in enumerate(zip(frames, copies, strict=True)):
        assert out[i * (k + 1)] is frame
        np.testing.assert_array_equal(frame, copy)


def test_streams_in_batches(interpolator: FrameInterpolator) -> None:
    consumed = 0

    def source() -> Iterator[np.ndarray]:
        nonlocal consumed
        for f in make_frames(10):
            consumed += 1
            yield f

    out = interpolator.interpolate(source(), 1)
    next(out)
    assert consumed == interpolator.batch_size + 1  # one batch of pairs, not the whole video
    assert 1 + sum(1 for _ in out) == 19


def test_single_and_empty_inputs(interpolator: FrameInterpolator) -> None:
    one = make_frames(1)
    out = list(interpolator.interpolate(one, 2))
    assert len(out) == 1 and out[0] is one[0]
    assert list(interpolator.interpolate([], 2)) == []


@pytest.mark.parametrize("kind,batch", [("rife", 2), ("rife", 16), ("film", 2), ("film", 4)])  # CPU and CUDA defaults
def test_batched_equals_one_by_one(weights_dir: Path, kind: str, batch: int) -> None:
    """Batch-size invariance: the default batches give batch 1's frames within one grey level (float reassociation
    in batched convolutions moves a few values across a rounding boundary)."""
    frames = make_frames(5)
    batched = list(load_interpolator(kind, weights_dir, batch_size=batch).interpolate(frames, 4))
    single = list(load_interpolator(kind, weights_dir, batch_size=1).interpolate(frames, 4))
    assert len(batched) == len(single) == 21
    diff = np.abs(np.stack(batched).astype(int) - np.stack(single))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (kind, batch)


def test_rejects_frames_of_another_size(interpolator: FrameInterpolator) -> None:
    frames = [*make_frames(2), np.zeros((H, W + 2, 3), np.uint8)]
    with pytest.raises(ValueError, match="uint8 HxWx3 of one size"):
        list(interpolator.interpolate(frames, 1))


def test_load_interpolator_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown interpolator"):
        load_interpolator("dain", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"flownet\.pkl"):
        load_interpolator("rife", tmp_path)


# RIFE ------------------------------------------------------------------------------------------------------------


def test_rife_checkpoint_is_a_prefixed_state_dict_of_the_real_layout(weights_dir: Path) -> None:
    raw = torch.load(weights_path("rife", weights_dir), weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    assert raw["module.block0.conv0.0.0.weight"].shape == (96, 15, 3, 3)  # 4.26: 7 + 2x4 input channels, c=192
    assert raw["module.block4.lastconv.0.weight"].shape == (32, 52, 4, 4)  # 4 x (4 flow + 1 mask + 8 features)
    assert "module.encode.cnn3.weight" in raw
    net = load_rife(weights_path("rife", weights_dir))
    assert net.config == IFNetConfig() and net.config.pad_multiple == 64
    assert 5.5e6 < sum(p.numel() for p in net.parameters()) < 5.8e6


def test_rife_loads_other_layouts_and_ignores_training_only_tensors(tmp_path: Path) -> None:
    path = build_tiny_rife(tmp_path / "flownet.pkl", SMALL_RIFE)
    raw = torch.load(path, weights_only=True)
    raw["module.teacher.conv0.0.0.weight"] = torch.zeros(1)  # 4.26's release file still carries these
    raw["module.caltime.0.weight"] = torch.zeros(1)
    torch.save(raw, path)
    assert load_rife(path).config == SMALL_RIFE
    old = IFNetConfig(head_width=8, feature_channels=8, block_widths=(16, 16, 8, 8), carries_features=False)
    assert load_rife(build_tiny_rife(tmp_path / "old.pkl", old)).config.pad_multiple == 32


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda sd: sd.update({"module.block9.extra": torch.zeros(1)}), "unexpected keys block9.extra"),
        (lambda sd: sd.pop("module.block2.convblock.3.beta"), "missing keys block2.convblock.3.beta"),
        (lambda sd: sd.pop("module.encode.cnn0.weight"), "missing key 'encode.cnn0.weight'"),
        (lambda sd: sd.update({"module.block1.conv0.0.0.weight": torch.zeros(8, 3, 3, 3)}), "inconsistent"),
    ],
)
def test_rife_rejects_a_wrong_state_dict(tmp_path: Path, mutate, message: str) -> None:
    path = build_tiny_rife(tmp_path / "flownet.pkl", SMALL_RIFE)
    raw = torch.load(path, weights_only=True)
    mutate(raw)
    torch.save(raw, path)
    with pytest.raises(ValueError, match=message) as err:
        load_rife(path)
    assert str(path) in str(err.value)


def test_rife_rejects_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"garbage\.pkl: not a readable PyTorch checkpoint"):
        load_rife(garbage)
    listed = tmp_path / "list.pkl"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_rife(listed)


def test_rife_with_zero_flow_and_mask_heads_is_the_even_blend(weights_dir: Path) -> None:
    net = load_rife(weights_path("rife", weights_dir))
    with torch.no_grad():
        for i in range(len(net.config.block_widths)):
            last = getattr(net, f"block{i}").lastconv[0]
            last.weight.zero_()
            last.bias.zero_()
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        out = net(a, b, torch.tensor([0.25, 0.5]))  # the mask, not t, weighs the images: sigmoid(0) = 0.5
    torch.testing.assert_close(out, (a + b) / 2, atol=1e-5, rtol=0)  # grid_sample at exact pixel centres

    frames = make_frames(3)
    interp = FrameInterpolator(
        "rife",
        net,
        rife_frames_between,
        device=torch.device("cpu"),
        dtype=torch.float32,
        pad_multiple=net.config.pad_multiple,
        batch_size=2,
    )
    out_frames = list(interp.interpolate(frames, 1))
    for i in range(2):
        expected = (frames[i].astype(float) + frames[i + 1]) / 2
        assert np.abs(out_frames[2 * i + 1] - expected).max() <= 0.5 + 1e-6


def test_rife_batch_equals_single_at_tensor_level(weights_dir: Path) -> None:
    net = load_rife(weights_path("rife", weights_dir))
    torch.manual_seed(1)
    a, b, t = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64), torch.tensor([0.2, 0.5, 0.8])
    with torch.inference_mode():
        batched = net(a, b, t)
        single = torch.cat([net(a[i : i + 1], b[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


# FILM ------------------------------------------------------------------------------------------------------------


def test_film_file_is_torchscript_with_the_port_interface(weights_dir: Path) -> None:
    model = load_film(weights_path("film", weights_dir))
    assert isinstance(model.net, torch.jit.ScriptModule) and model.layout == CURRENT_LAYOUT == "v1.0.2"
    x0, x1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    dt = torch.tensor([[0.25], [0.75]])  # the current release's call: one time per item, (B, 1)
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        out = model.net(x0, x1, dt)
        with pytest.raises(RuntimeError):  # as the real v1.0.2 file, which reshapes dt itself
            model.net(x0, x1, dt.view(2, 1, 1, 1))
    assert out.shape == (2, 3, 64, 64)
    eager = FILMNet(filters=4, flow_filters=(4, 4, 8, 8)).eval()
    eager.load_state_dict(model.net.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(eager(x0, x1, dt), out)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_film_layout_is_read_from_the_file_not_its_name(tmp_path: Path, layout: str) -> None:
    other = next(x for x in LAYOUTS if x != layout)
    path = build_tiny_film(tmp_path / f"film_net_{other}.pt", layout=layout)  # a misleading name
    assert load_film(path).layout == layout
    assert set(load_film(path).net.state_dict()) == film_state_keys(layout)
    if layout == "v1.0.0":
        assert len(film_state_keys("v1.0.0") ^ film_state_keys()) == 32  # 16 names differ, as in the real files


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_film_layouts_read_dt_as_the_port_files_do(tmp_path: Path) -> None:
    x0, x1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    nets = {lay: load_film(build_tiny_film(tmp_path / f"{lay}.pt", layout=lay)).net for lay in LAYOUTS}
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        with pytest.raises(RuntimeError):  # v1.0.1: batch_dt[:, 0] broadcasts against the width
            nets["v1.0.1"](x0, x1, torch.tensor([[0.25], [0.75]]))
        one_time = nets["v1.0.1"](x0, x1, torch.full((1, 1), 0.25))
        per_item = nets["v1.0.2"](x0, x1, torch.full((2, 1), 0.25))
        torch.testing.assert_close(one_time, per_item)  # same weights (same seed), same time
        fixed = [nets["v1.0.0"](x0, x1, torch.full((1, 1), t)) for t in (0.25, 0.5, 0.75)]
        assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[1], fixed[2])  # v1.0.0 ignores dt
        assert not torch.equal(nets["v1.0.2"](x0, x1, torch.full((2, 1), 0.5)), per_item)


def _port_inference(net: torch.jit.ScriptModule, img0: Tensor, img1: Tensor, n: int) -> list[Tensor]:
    """The frames between ``img0`` and ``img1`` (1, 3, H, W) as the port's inference script makes them: one call
    per frame in PORT_ORDER, batch 1, ``dt`` (1, 1) in float32 from ``torch.linspace``, clamped."""
    times = torch.linspace(0, 1, n + 2)
    frames = {0: img0, n + 1: img1}
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for target, left, right in PORT_ORDER[n]:
            dt = img0.new_full((1, 1), float((times[target] - times[left]) / (times[right] - times[left])))
            frames[target] = net(frames[left], frames[right], dt).clamp(0, 1)
    return [frames[i] for i in range(1, n + 1)]


@pytest.mark.parametrize("n", range(1, 6))
def test_film_midpoint_schedule_is_the_ports(n: int) -> None:
    rounds = _midpoint_rounds(n)
    assert sorted(s[:3] for r in rounds for s in r) == sorted(PORT_ORDER[n])
    known = {0, n + 1}
    for steps in rounds:
        for target, left, right, dt in steps:
            assert left in known and right in known and left < target < right
            assert dt == pytest.approx((target - left) / (right - left))
        known |= {s[0] for s in steps}
    assert known == set(range(n + 2))


PORT_CASES = [(lay, n) for lay in LAYOUTS for n in range(1, 6) if lay != "v1.0.0" or n in (1, 3)]  # v1.0.0: midpoints


@pytest.mark.parametrize("layout,n", PORT_CASES)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_film_equals_the_port_script_for_each_layout(tmp_path: Path, layout: str, n: int) -> None:
    """Batched rounds (two pairs, up to four items per call, so calls would mix times) vs the port's one-by-one
    calls on the same file: the same frames within float32 noise."""
    model = load_film(build_tiny_film(tmp_path / "film.pt", layout=layout))
    torch.manual_seed(n)
    a, b = torch.rand(2, 3, 64, 128), torch.rand(2, 3, 64, 128)
    ours = film_frames_between(model, a, b, n, max_batch=4)
    for pair in range(2):
        ref = _port_inference(model.net, a[pair : pair + 1], b[pair : pair + 1], n)
        torch.testing.assert_close(ours[pair], torch.cat(ref), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_film_interpolator_pads_centred_and_rounds_like_the_port_script_would(tmp_path: Path) -> None:
    """uint8 frames through ``load_interpolator`` (batch 1) equal the port's script on centre-padded frames, cropped
    back, rounded; a right/bottom pad would differ."""
    build_tiny_film(weights_path("film", tmp_path))
    interp = load_interpolator("film", tmp_path, batch_size=1)
    frames = make_frames(2)
    out = list(interp.interpolate(frames, 2))
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    ph, pw = -H % 64, -W % 64
    top, left = ph // 2, pw // 2
    padded = torch.nn.functional.pad(x, (left, pw - left, top, ph - top))
    ref = _port_inference(interp.model.net, padded[:1], padded[1:], 2)
    for got, want in zip(out[1:3], ref, strict=True):
        want = (want[0, :, top : top + H, left : left + W] * 255).round().byte().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, want)
    corner = _port_inference(interp.model.net, *torch.nn.functional.pad(x, (0, pw, 0, ph)).split(1), 2)
    assert not torch.equal(corner[0][0, :, :H, :W], ref[0][0, :, top : top + H, left : left + W])


def test_film_v100_makes_midpoints_only_and_refuses_other_counts_up_front(tmp_path: Path) -> None:
    build_tiny_film(weights_path("film", tmp_path), layout="v1.0.0")
    interp = load_interpolator("film", tmp_path, batch_size=2)
    for n in (1, 3):
        interp.check_between(n)
        assert len(list(interp.interpolate(make_frames(3), n))) == 2 * (n + 1) + 1
    for n in (2, 4, 5):
        with pytest.raises(ValueError, match=r"v1\.0\.0 layout, which always interpolates at t = 0\.5"):
            interp.check_between(n)
        with pytest.raises(ValueError, match=r"not 2|not 4|not 5"):
            next(iter(interp.interpolate(make_frames(3), n)))


def test_interpolated_frames_are_rounded_not_truncated() -> None:
    """Both references truncate (``.byte()``); we round on purpose (see the package docstring)."""

    def between(model: torch.nn.Module, a: Tensor, b: Tensor, n: int, max_batch: int) -> Tensor:
        return torch.full((a.shape[0], n, *a.shape[1:]), 0.7 / 255)

    interp = FrameInterpolator(
        "rife",
        torch.nn.Identity(),
        between,
        device=torch.device("cpu"),
        dtype=torch.float32,
        pad_multiple=64,
        batch_size=2,
    )
    out = list(interp.interpolate(make_frames(2), 1))
    assert (out[1] == 1).all()  # truncation would give 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_film_rejects_non_torchscript_and_foreign_torchscript(tmp_path: Path) -> None:
    state = tmp_path / "state.pt"
    torch.save(FILMNet(filters=4, flow_filters=(4, 4, 8, 8)).state_dict(), state)
    with pytest.raises(ValueError, match=r"state\.pt: not a TorchScript file"):
        load_film(state)
    other = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv2d(3, 3, 1)).save(str(other))
    with pytest.raises(ValueError, match=r"conv\.pt: TorchScript file is not FILM"):
        load_film(other)


def test_tiny_film_is_small(tmp_path: Path) -> None:
    assert build_tiny_film(tmp_path / "f.pt").stat().st_size < 2_000_000


# Temporal plan ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(6))
def test_interpolated_frames_multiply_fps_and_keep_duration(k: int) -> None:
    plan = plan_temporal(81, 16, num_interpolated_frames=k)
    assert (plan.generate_frames, plan.n_between) == (81, k)
    assert (plan.output_frames, plan.output_fps) == (80 * (k + 1) + 1, 16.0 * (k + 1))
    assert (plan.output_frames - 1) / plan.output_fps == pytest.approx(80 / 16)
    assert plan.control_indices == tuple(range(81))


@pytest.mark.parametrize(
    "f,generate,held,notes",
    [(0, 81, 0, 0), (1, 41, 0, 0), (2, 29, 2, 0), (3, 21, 0, 0), (4, 17, 0, 0), (5, 17, 0, 1)],
)
def test_downsample_keeps_every_f_plus_1th_frame(f: int, generate: int, held: int, notes: int) -> None:
    plan = plan_temporal(81, 16, temporal_downsample_factor=f)
    used = min(f, 4)  # 81 frames at f=5 would need fewer than 17 generated frames
    assert plan.downsample_factor == used and len(plan.notes) == notes
    assert plan.generate_frames == generate and plan.held_frames == held
    assert plan.control_indices == tuple(min(i * (used + 1), 80) for i in range(generate))
    assert (plan.n_between, plan.output_frames, plan.output_fps, plan.generate_fps) == (used, 81, 16.0, 16 / (used + 1))


def test_downsample_and_interpolation_combine_in_one_pass() -> None:
    plan = plan_temporal(81, 16, num_interpolated_frames=1, temporal_downsample_factor=1)
    assert (plan.generate_frames, plan.n_between, plan.output_frames, plan.output_fps) == (41, 3, 161, 32.0)


@pytest.mark.parametrize(
    "frames,fps,min_fps,f,reason",
    [
        (81, 16, 15, 0, "already fit"),
        (161, 30, 15, 1, "keeping 1 frame in 2 generates 81 frames at 15 fps"),
        (241, 30, 5, 2, "keeping 1 frame in 3 generates 81 frames at 10 fps"),
        (161, 16, 15, 0, "cannot fit the native 81 without going below 15 fps"),
        (241, 30, 15, 1, "f=1 generates 121 frames at 15 fps"),
        (81, 10, 15, 0, "already below the 15 fps minimum"),
    ],
)
def test_auto_downsample_choice_and_reason(frames: int, fps: float, min_fps: float, f: int, reason: str) -> None:
    plan = plan_temporal(
        frames, fps, enable_auto_downsample=True, auto_downsample_min_fps=min_fps, temporal_downsample_factor=3
    )
    assert plan.downsample_factor == f
    assert reason in plan.notes[0] and "temporal_downsample_factor=3 ignored" in plan.notes[0]
    assert (plan.output_frames, plan.output_fps) == (frames, fps)


@pytest.mark.parametrize("frames", [17, 21, 33, 77, 81, 121, 161, 241])
def test_plan_invariants_for_every_combination(frames: int) -> None:
    for fps, k, f, auto in itertools.product((8, 16, 30), range(6), range(6), (False, True)):
        plan = plan_temporal(
            frames, fps, num_interpolated_frames=k, temporal_downsample_factor=f, enable_auto_downsample=auto
        )
        g, step = plan.generate_frames, plan.n_between + 1
        assert g % 4 == 1 and 17 <= g <= 241
        if auto and g > NATIVE_FRAMES:  # only when a larger f would drop below 15 fps or is not possible
            assert fps / (plan.downsample_factor + 2) < 15 or plan.downsample_factor == max_factor(frames)
        assert plan.output_frames == (frames - 1) * (k + 1) + 1 and plan.output_fps == fps * (k + 1)
        assert step == (plan.downsample_factor + 1) * (k + 1)
        stream = (g - 1) * step + 1  # what interpolating the generated frames yields before the cut
        assert plan.output_frames <= stream < plan.output_frames + 4 * step
        assert g == frames_to_generate(frames, plan.downsample_factor)
        assert plan.held_frames == sum(i * (plan.downsample_factor + 1) > frames - 1 for i in range(g))


@pytest.mark.parametrize(
    "frames,generate,held", [(120, 121, 1), (10, 17, 7), (1, 17, 16), (118, 121, 3), (1200, 1201, 1)]
)
def test_a_timeline_of_any_length_generates_the_next_valid_length(frames: int, generate: int, held: int) -> None:
    """``match_input_num_frames`` plans the input's exact count, however long (past one pass it runs as windows):
    the model makes the next 4k+1 length (at least 17) and the frames past the timeline's end are cut."""
    plan = plan_temporal(frames, 16)
    assert (plan.generate_frames, plan.held_frames, plan.output_frames) == (generate, held, frames)
    assert plan.control_indices == tuple(min(i, frames - 1) for i in range(generate))


def test_plan_rejects_an_empty_timeline() -> None:
    with pytest.raises(ValueError):
        plan_temporal(0, 16)
