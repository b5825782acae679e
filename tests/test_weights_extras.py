"""Annotator, interpolator and mask tracker weights: manifest, check (present / absent / missing / corrupt), zip
extraction in the downloader (hub faked, no network), and ``vace weights check`` on the tiny weights."""

from __future__ import annotations

import hashlib
import io
import stat
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipelines.manifest import (
    DEFAULT_DOWNLOAD,
    DEFAULT_MASK_TRACKER,
    ENTRIES,
    EXTRAS,
    INTERPOLATORS,
    MASK_TRACKERS,
    MODELS,
    SHARED_FOLDER,
    TASK_ANNOTATORS,
    Source,
)
from weights import download as dl
from weights.check import check
from weights.records import read_records, sha256_file, write_records
from weights.report import CORRUPT, MISSING
from weights.tiny.film import build_tiny_film
from weights.tiny.tracker import build_tiny_tracker

RIFE_ZIP = "RIFEv4.26_0921.zip"


def _torch_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(64, dtype=torch.float32) + seed}, buf)  # zip format, like the real files
    return buf.getvalue()


def _film_bytes(layout: str = "v1.0.2") -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return build_tiny_film(Path(tmp, "film.pt"), layout=layout).read_bytes()


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.ones(4)})


def _zip_bytes(members: dict[str, bytes], symlinks: tuple[str, ...] = (), typed: bool = True) -> bytes:
    """A zip of ``members``; ``typed``: with unix file types as Info-ZIP stores them (else permissions only)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((stat.S_IFREG if typed else 0) | 0o644) << 16
            zf.writestr(info, data)
        for name in symlinks:  # a unix symlink member: mode S_IFLNK, the data is the target
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


FLOWNET = _torch_bytes(1)

# What each extra's folder holds once complete (for rife: the extracted file, not the zip).
FILES: dict[str, dict[str, bytes]] = {
    "dwpose": {"yolox_l.onnx": b"\x08\x07fake-yolox", "dw-ll_ucoco_384.onnx": b"\x08\x07fake-rtmpose"},
    "midas": {"dpt_hybrid-midas-501f0c75.pt": _torch_bytes(2)},
    "openpose": {"body_pose_model.pth": _torch_bytes(3)},
    "depth_anything_v2": {
        "config.json": b'{"model_type": "depth_anything"}',
        "model.safetensors": _safetensors_bytes(),
    },
    "rife": {"flownet.pkl": FLOWNET},
    "film": {"film_net_fp32.pt": _film_bytes()},
}


def build_extras(root: Path, keys=tuple(EXTRAS), records: bool = True) -> Path:
    for key in keys:
        folder = root / EXTRAS[key].folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in FILES[key].items():
            (folder / name).write_bytes(data)
        if records:
            write_records(folder, {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                   for n, d in FILES[key].items()})  # fmt: skip
    return root


def _problems(report, key, kind):
    return [p for p in report.entries[key].problems if p.kind == kind]


def _paths(report, key, kind):
    return [p.path for p in _problems(report, key, kind)]


# ---------------------------------------------------------------- manifest


def test_manifest_extras():
    assert set(EXTRAS) == {"dwpose", "midas", "openpose", "depth_anything_v2", "rife", "film"}
    assert set(EXTRAS) <= set(ENTRIES)
    assert {k for keys in TASK_ANNOTATORS.values() for k in keys} | set(INTERPOLATORS) == set(EXTRAS)
    assert DEFAULT_DOWNLOAD == (
        "wan-vace-14b",
        "wan-22-vace-fun-a14b",
        "dwpose",
        "midas",
        "rife",
        "film",
        "sam2.1-hiera-small",
    )
    assert set(MASK_TRACKERS) == {f"sam2.1-hiera-{size}" for size in ("tiny", "small", "base-plus", "large")}
    assert MASK_TRACKERS[DEFAULT_MASK_TRACKER].sources[0].repo_id == "facebook/sam2.1-hiera-small"
    assert all(k in ENTRIES for k in DEFAULT_DOWNLOAD)
    assert EXTRAS["rife"].sources[0].extract == ("flownet.pkl",)
    for key, files in FILES.items():  # the test layout matches the manifest's requirements
        assert set(EXTRAS[key].required) <= set(files), key


# ---------------------------------------------------------------- check


def test_complete_extras_are_ok(tmp_path):
    report = check(build_extras(tmp_path), deep=True)
    for key in EXTRAS:
        assert report.entries[key].status == "ok" and report.ok_for(key), report.render()
    assert report.annotators() == {"pose": {"dwpose": "ok", "openpose": "ok"},
                                   "depth": {"midas": "ok", "depth_anything_v2": "ok"}}  # fmt: skip
    assert report.interpolators() == {"rife": "ok", "film": "ok"}
    text = report.render()
    assert "pose: dwpose ok, openpose ok" in text and "Interpolators: rife ok, film ok" in text


@pytest.mark.parametrize("layout", ["v1.0.0", "v1.0.1", "v1.0.2"])
def test_check_says_which_film_layout_a_file_is(tmp_path, layout):
    build_extras(tmp_path, keys=("film",), records=False)
    (tmp_path / "interpolation/film/film_net_fp32.pt").write_bytes(_film_bytes(layout))
    report = check(tmp_path)
    assert report.ok_for("film")
    (note,) = report.entries["film"].notes
    assert f"layout {layout}" in note and ("t = 0.5" in note) == (layout == "v1.0.0")
    assert f"  film: film_net_fp32.pt: dajes/frame-interpolation-pytorch layout {layout}" in report.render()


def test_check_flags_a_film_file_that_is_not_film_net(tmp_path):
    build_extras(tmp_path, keys=("film",), records=False)
    (tmp_path / "interpolation/film/film_net_fp32.pt").write_bytes(_torch_bytes(4))  # a zip, not TorchScript
    (problem,) = _problems(check(tmp_path), "film", CORRUPT)
    assert problem.path == "film_net_fp32.pt" and "not a TorchScript file" in problem.detail


def test_absent_extras_are_reported_not_errors(tmp_path):
    build_extras(tmp_path, keys=("dwpose", "rife"))
    report = check(tmp_path)
    assert report.ok, report.render()
    assert report.ok_for("dwpose") and report.ok_for("rife")
    for key in ("openpose", "midas", "depth_anything_v2", "film"):
        assert report.entries[key].status == "absent" and not report.ok_for(key)
    assert report.annotators()["pose"] == {"dwpose": "ok", "openpose": "absent"}
    assert "Interpolators: rife ok, film absent" in report.render()
    only = check(tmp_path, keys=["midas"])  # only what was asked for is listed
    assert only.annotators() == {"depth": {"midas": "absent"}} and only.interpolators() == {}


def test_missing_required_extra_file(tmp_path):
    build_extras(tmp_path, records=False)
    (tmp_path / "annotators/dwpose/dw-ll_ucoco_384.onnx").unlink()
    (tmp_path / "annotators/depth_anything_v2/model.safetensors").unlink()
    report = check(tmp_path)
    assert _paths(report, "dwpose", MISSING) == ["dw-ll_ucoco_384.onnx"]
    assert _paths(report, "depth_anything_v2", MISSING) == ["model.safetensors"]
    assert report.entries["dwpose"].status == "missing" and not report.ok
    assert "pose: dwpose missing, openpose ok" in report.render()


def test_missing_extra_file_recorded_at_download(tmp_path):
    build_extras(tmp_path)
    (tmp_path / "interpolation/rife/flownet.pkl").unlink()
    report = check(tmp_path)
    assert set(_paths(report, "rife", MISSING)) == {"flownet.pkl"}


def test_corrupt_extras(tmp_path):
    build_extras(tmp_path, records=False)  # the file checks alone
    (tmp_path / "annotators/dwpose/yolox_l.onnx").write_bytes(b"")
    midas = tmp_path / "annotators/midas/dpt_hybrid-midas-501f0c75.pt"
    midas.write_bytes(FILES["midas"][midas.name][:-30])  # truncated: the zip's central directory is gone
    report = check(tmp_path)
    (empty,) = _problems(report, "dwpose", CORRUPT)
    assert empty.path == "yolox_l.onnx" and "empty" in empty.detail
    (cut,) = _problems(report, "midas", CORRUPT)
    assert cut.path == midas.name and "zip" in cut.detail
    assert report.entries["midas"].status == "corrupt" and not report.ok
    assert report.ok_for("openpose") and report.ok_for("rife")


def test_extras_against_records(tmp_path):
    build_extras(tmp_path)
    flownet = tmp_path / "interpolation/rife/flownet.pkl"
    flownet.write_bytes(FLOWNET + b"\0")
    film = tmp_path / "interpolation/film/film_net_fp32.pt"
    data = bytearray(film.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, still a readable zip: only the sha256 can tell
    film.write_bytes(bytes(data))
    report = check(tmp_path)
    assert _paths(report, "rife", CORRUPT) == ["flownet.pkl"]
    assert report.ok_for("film")
    assert _paths(check(tmp_path, deep=True), "film", CORRUPT) == ["film_net_fp32.pt"]


# ---------------------------------------------------------------- zip extraction


def _extract(tmp_path: Path, members: dict[str, bytes], symlinks=(), typed=True) -> tuple[Path, dict]:
    folder = tmp_path / "interpolation/rife"
    folder.mkdir(parents=True)
    (folder / RIFE_ZIP).write_bytes(_zip_bytes(members, symlinks, typed))
    source = Source("hzwer/RIFE", (RIFE_ZIP,), extract=("flownet.pkl",))
    return folder, dl.extract_from_zips(EXTRAS["rife"], source, folder)


def test_extract_takes_the_member_by_basename(tmp_path, capsys):
    folder, out = _extract(tmp_path, {"train_log/flownet.pkl": FLOWNET, "train_log/RIFE_HDv3.py": b"# code",
                                      "__MACOSX/train_log/._flownet.pkl": b"apple"})  # fmt: skip
    assert out == {"flownet.pkl": f"{RIFE_ZIP}/train_log/flownet.pkl"}
    assert (folder / "flownet.pkl").read_bytes() == FLOWNET
    assert sorted(p.name for p in folder.iterdir()) == [RIFE_ZIP, "flownet.pkl"]  # nothing else, no leftovers
    source = Source("hzwer/RIFE", (RIFE_ZIP,), extract=("flownet.pkl",))
    assert dl.extract_from_zips(EXTRAS["rife"], source, folder) == out
    assert "already extracted" in capsys.readouterr().out


def test_extract_refuses_zip_slip_and_links(tmp_path, capsys):
    members = {"../flownet.pkl": b"evil", "/tmp/flownet.pkl": b"evil", "a/../../flownet.pkl": b"evil",
               "ok/flownet.pkl": FLOWNET}  # fmt: skip
    folder, out = _extract(tmp_path, members, symlinks=("link/flownet.pkl",), typed=False)
    assert out == {"flownet.pkl": f"{RIFE_ZIP}/ok/flownet.pkl"}
    assert (folder / "flownet.pkl").read_bytes() == FLOWNET
    assert not (tmp_path / "interpolation/flownet.pkl").exists() and not (tmp_path / "flownet.pkl").exists()
    log = capsys.readouterr().out
    assert log.count("refusing") == 4
    assert "path leaves" in log and "absolute path" in log and "not a regular file" in log


def test_extract_with_only_unsafe_members_extracts_nothing(tmp_path, capsys):
    folder, out = _extract(tmp_path, {"../../flownet.pkl": FLOWNET})
    assert out == {} and not (folder / "flownet.pkl").exists()
    assert not (tmp_path / "flownet.pkl").exists() and not (tmp_path.parent / "flownet.pkl").exists()
    assert "WARNING no regular file named flownet.pkl" in capsys.readouterr().out
    assert _paths(check(tmp_path, keys=["rife"]), "rife", MISSING) == ["flownet.pkl"]


def test_extract_refuses_ambiguous_members(tmp_path):
    with pytest.raises(ValueError, match="several zip members"):
        _extract(tmp_path, {"a/flownet.pkl": FLOWNET, "b/flownet.pkl": FLOWNET})


# ---------------------------------------------------------------- download, hub faked

_LFS = (".onnx", ".pt", ".pth", ".pkl", ".zip", ".safetensors")


class FakeExtrasHub:
    """The extras' repos as {repo_id: {path: bytes}}; weights files are 'LFS' (hub sha256 known)."""

    def __init__(self):
        self.zip = _zip_bytes({"train_log/flownet.pkl": FLOWNET, "train_log/IFNet_HDv3.py": b"# code"})
        self.repos = {
            "yzd-v/DWPose": {**FILES["dwpose"], "README.md": b"# DWPose"},
            "lllyasviel/Annotators": {**FILES["midas"], **FILES["openpose"], "other.pth": _torch_bytes(9)},
            "depth-anything/Depth-Anything-V2-Small-hf": FILES["depth_anything_v2"],
            "hzwer/RIFE": {RIFE_ZIP: self.zip, "RIFEv4.25_0919.zip": b"not fetched"},
            "nguu/film-pytorch": FILES["film"],
        }
        self.commit = "feed" * 10
        self.calls: list[tuple[str, Path]] = []
        self.revisions: dict[str, str] = {}
        hub = self

        class Api:
            def model_info(self, repo_id, *, revision=None, files_metadata=False, token=None, **kw):
                hub.revisions[repo_id] = revision
                siblings = []
                for name, data in hub.repos[repo_id].items():
                    lfs = SimpleNamespace(size=len(data), sha256=hashlib.sha256(data).hexdigest())
                    siblings.append(SimpleNamespace(rfilename=name, size=len(data), lfs=lfs if name.endswith(_LFS)
                                                    else None))  # fmt: skip
                return SimpleNamespace(sha=hub.commit, siblings=siblings)

        self.Api = Api

    def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None, local_dir=None, token=None, **kw):
        from huggingface_hub.utils import filter_repo_objects

        assert revision == self.commit
        self.calls.append((repo_id, Path(local_dir)))
        files = self.repos[repo_id]
        for name in filter_repo_objects(list(files), allow_patterns=allow_patterns):
            path = Path(local_dir) / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(files[name])
        return str(local_dir)


@pytest.fixture
def hub(monkeypatch):
    fake = FakeExtrasHub()
    monkeypatch.setattr(dl, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(dl, "HfApi", fake.Api)
    return fake


def test_download_extras(tmp_path, hub, capsys):
    wd = tmp_path / "w"
    dl.download(list(EXTRAS), wd)
    assert not (wd / SHARED_FOLDER).exists()  # extras do not pull in the shared text encoder / VAE
    assert not any((wd / m.folder).exists() for m in MODELS.values())
    rife = wd / "interpolation/rife"
    assert sorted(p.name for p in rife.iterdir() if not p.name.startswith(".")) == [RIFE_ZIP, "flownet.pkl"]
    assert (rife / "flownet.pkl").read_bytes() == FLOWNET
    assert not (wd / "annotators/midas/other.pth").exists()
    assert hub.revisions["nguu/film-pytorch"] == "887b2c42bebcb323baf6c3b6d59304135699b575"  # the pinned FILM file

    rec = read_records(rife)
    assert rec["flownet.pkl"] == {"size": len(FLOWNET), "sha256": hashlib.sha256(FLOWNET).hexdigest(),
                                  "repo_id": "hzwer/RIFE", "commit": hub.commit,
                                  "extracted_from": f"{RIFE_ZIP}/train_log/flownet.pkl"}  # fmt: skip
    assert rec[RIFE_ZIP]["sha256"] == hashlib.sha256(hub.zip).hexdigest()
    onnx = FILES["dwpose"]["yolox_l.onnx"]
    assert read_records(wd / "annotators/dwpose")["yolox_l.onnx"]["sha256"] == hashlib.sha256(onnx).hexdigest()

    report = check(wd, deep=True)
    assert all(report.entries[k].status == "ok" for k in EXTRAS), report.render()
    assert report.ok
    assert "[rife] ok" in capsys.readouterr().out

    # A damaged extracted file shows in check and is put back by the next download.
    (rife / "flownet.pkl").write_bytes(FLOWNET[:100])
    assert check(wd).entries["rife"].status == "corrupt"
    dl.download(["rife"], wd)
    assert (rife / "flownet.pkl").read_bytes() == FLOWNET
    assert check(wd, deep=True).ok_for("rife")
    assert sha256_file(rife / "flownet.pkl") == read_records(rife)["flownet.pkl"]["sha256"]


def test_download_a_mask_tracker_takes_its_transformers_files_only(tmp_path, hub):
    """The hub's SAM2.1 repos hold transformers' files beside Meta's original checkpoint: only the former come, and
    the folder checks as sound (the files here are a tiny model's, as transformers saves one)."""
    saved = build_tiny_tracker(tmp_path / "saved")
    files = {path.name: path.read_bytes() for path in saved.iterdir()}
    hub.repos["facebook/sam2.1-hiera-small"] = {
        **files,
        "preprocessor_config.json": b"{}",
        "sam2.1_hiera_small.pt": b"the original checkpoint, not fetched",
        "README.md": b"# SAM 2.1",
    }
    wd = tmp_path / "w"
    dl.download([DEFAULT_MASK_TRACKER], wd)
    folder = wd / MASK_TRACKERS[DEFAULT_MASK_TRACKER].folder
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        [*files, "preprocessor_config.json"]
    )
    report = check(wd, deep=True)
    assert report.entries[DEFAULT_MASK_TRACKER].status == "ok", report.render()
    assert report.mask_trackers()[DEFAULT_MASK_TRACKER] == "ok"
    assert f"Mask trackers (for mask_image_url; the default is {DEFAULT_MASK_TRACKER})" in report.render()
    (folder / "model.safetensors").write_bytes(files["model.safetensors"][:1000])
    assert check(wd).entries[DEFAULT_MASK_TRACKER].status == "corrupt"


def test_download_unknown_key_fetches_nothing(tmp_path, hub):
    with pytest.raises(ValueError):
        dl.download(["rife", "nope"], tmp_path)
    assert hub.calls == []


# ---------------------------------------------------------------- the tiny weights


def test_vace_weights_check_passes_on_tiny_weights(tiny_weights, capsys):
    from server.cli import main

    if not (tiny_weights / EXTRAS["dwpose"].folder).is_dir():  # older build_tiny_weights without the annotators
        from weights.tiny.annotators import build_tiny_annotators

        build_tiny_annotators(tiny_weights)
    capsys.readouterr()
    assert main(["weights", "check", str(tiny_weights)]) == 0
    out = capsys.readouterr().out
    assert "pose: dwpose ok, openpose ok" in out and "depth: midas ok, depth_anything_v2 ok" in out
    assert "Interpolators: rife ok, film ok" in out and f"{DEFAULT_MASK_TRACKER} ok" in out
    report = check(tiny_weights)
    assert all(report.ok_for(k) for k in ENTRIES), report.render()
