"""One job on several processes (``--parallel``): the frames equal the single-process frames of the same request.

Each group test starts a real gloo group on loopback (2 processes, 4 for ``cfg=2,ulysses=2``; this process is rank 0,
as in ``vace generate --parallel``) and runs whole jobs through ``generate()`` on tiny random weights, for both model
families, with a reference image, first- and last-frame conditioning and the step cache on. The enforced tolerance is
``frames_match``'s: the uint8 frames of the frames zip at most one level from the 1-process run's, in at most 0.1% of
values (byte-identical with one torch thread).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from frames_match import assert_same_frames
from PIL import Image

from pipelines.generate import generate
from pipelines.group import job_group
from pipelines.hooks import JobHooks
from pipelines.loading import ModelManager
from pipelines.parallel import ParallelSpec
from pipelines.runtime import RuntimeConfig
from pipelines.schema import VaceInput

FAMILIES = ("wan-vace-14b", "wan-22-vace-fun-a14b")  # Wan2.1 one expert, Wan2.2 two experts


def test_spec_parsing_and_refusals():
    assert ParallelSpec.parse("cfg=2,ulysses=4") == ParallelSpec(cfg=2, ulysses=4)
    assert ParallelSpec.parse("ring=2, ulysses=2").world_size == 4
    assert str(ParallelSpec.parse("ulysses=4,cfg=2")) == "cfg=2,ulysses=4"
    for bad, words in (
        ("cfg=3", "cfg must be 1 or 2"),
        ("tp=2", "expected cfg=N"),
        ("ulysses=2,ulysses=2", "twice"),
        ("ulysses=0", "at least 1"),
    ):
        with pytest.raises(ValueError, match=words):
            ParallelSpec.parse(bad)
    with pytest.raises(ValueError, match="needs 4 devices"):
        ParallelSpec.parse("cfg=2,ring=2").check_devices(2)
    with pytest.raises(ValueError, match="ring attention needs CUDA"):
        ParallelSpec(ring=2).check_device_type("cpu")
    with pytest.raises(ValueError, match="12 attention heads do not divide by ulysses=8"):
        ParallelSpec(ulysses=8).check_heads(12)


def test_token_counts_that_do_not_split_are_refused_with_the_nearest_fit():
    spec = ParallelSpec(ulysses=4)
    spec.check_tokens(81, 0, 1560)  # 480p: 21 latent frames of 1560 tokens
    # 240p (26x15 = 390 tokens a frame, even but not a multiple of 4): 17 frames -> 5 latent frames -> 1950 tokens
    with pytest.raises(ValueError, match=r"1950 tokens \(5 latent frames of 390\).* 4 sequence shards .* 13 frames"):
        spec.check_tokens(17, 0, 390)
    # one reference image adds a latent frame: 6 x 390 = 2340 = 4 x 585 splits
    spec.check_tokens(17, 1, 390)
    with pytest.raises(ValueError, match="13 frames would"):
        ParallelSpec(ulysses=2).check_tokens(17, 0, 15)  # 5 x 15 tokens: odd; 4 latent frames (13 frames) are even


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("refs") / "ref.png"
    Image.fromarray((np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)).save(path)
    return path


def run_job(models: ModelManager, model: str, video: Path, ref: Path, workdir: Path) -> list[bytes]:
    """A pose job with a reference image, first- and last-frame conditioning and the step cache on; its frames as
    the zip's PNG bytes."""
    inp = VaceInput(
        prompt="a person dancing",
        video_url=str(video),
        num_frames=17,
        num_inference_steps=3,
        seed=5,
        acceleration="regular",
        ref_image_urls=[str(ref)],
        first_frame_url=str(ref),
        last_frame_url=str(ref),
        return_frames_zip=True,
    )
    workdir.mkdir(parents=True)
    log: list[str] = []
    generate(
        inp,
        task="pose",
        model=model,
        manager=models,
        workdir=workdir,
        publish=lambda p, _t: str(p),
        hooks=JobHooks(log=log.append),
    )
    assert any("step cache reused" in line and "reused 0 " not in line for line in log), log
    with zipfile.ZipFile(workdir / "frames.zip") as z:
        return [z.read(name) for name in sorted(z.namelist())]


@pytest.fixture(scope="module")
def single(models, pose_video, reference_image, tmp_path_factory) -> dict[str, list[bytes]]:
    workdir = tmp_path_factory.mktemp("single")
    return {model: run_job(models, model, pose_video, reference_image, workdir / model) for model in FAMILIES}


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the group's followers, spawned by this process)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _listening(pids: list[int]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses of the TCP sockets ``pids`` hold in LISTEN state, from /proc (Linux)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].partition(":")[0])  # 32-bit words in host (little-endian) order
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(ipaddress.ip_address(packed))
    return found


def assert_listens_on_loopback_only(pids: list[int]) -> None:
    """No socket of the group may listen on a wildcard (0.0.0.0, ::) or any other non-loopback address."""
    addresses = _listening(pids)
    assert addresses, "no listening socket found: gloo's ranks listen on loopback"
    exposed = [
        a
        for a in addresses
        if not (
            a.is_loopback
            or (isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)
        )
    ]
    assert not exposed, f"the group listens on {exposed}"


@pytest.mark.parametrize("spec", ["ulysses=2", "cfg=2", "cfg=2,ulysses=2"])
def test_parallel_job_frames_equal_single_process(spec, tiny_weights, pose_video, reference_image, single, tmp_path):
    with job_group(ParallelSpec.parse(spec), tiny_weights, RuntimeConfig()) as group:
        assert_listens_on_loopback_only([os.getpid(), *_children(os.getpid())])
        models = ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(), group=group)
        for model in FAMILIES:
            frames = run_job(models, model, pose_video, reference_image, tmp_path / model)
            assert len(frames) == 17
            assert_same_frames(frames, single[model], f"{spec} {model}")
