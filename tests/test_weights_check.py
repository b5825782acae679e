"""weights.check on small real-format layouts, and weights.download with the hub faked (no network)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from pipelines.manifest import (
    EXTRAS,
    MODELS,
    SHARED_COMPONENTS,
    SHARED_FOLDER,
    ModelEntry,
    required_any,
    required_paths,
)
from weights import download as dl
from weights.check import check
from weights.records import read_records, sha256_file, write_records
from weights.report import BROKEN_LINK, CORRUPT, MISSING

D14, D22, D13 = (MODELS[k].folder for k in ("wan-vace-14b", "wan-22-vace-fun-a14b", "wan-vace-1.3b"))
SHARD = "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"


# ---------------------------------------------------------------- building a fake layout


def _safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _diffusers_component(folder: Path, sharded: bool = False) -> None:
    _json(folder / "config.json", {"_class_name": "Fake", "dim": 4})
    if not sharded:
        _safetensors(folder / "diffusion_pytorch_model.safetensors", {"w": torch.randn(4, 4)})
        return
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": {"a.w": torch.randn(4, 4)},
        "diffusion_pytorch_model-00002-of-00002.safetensors": {"b.w": torch.randn(8), "b.b": torch.randn(2)},
    }
    for name, tensors in shards.items():
        _safetensors(folder / name, tensors)
    weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    _json(folder / "diffusion_pytorch_model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})


def _model_index(entry: ModelEntry) -> dict:
    index = {
        "_class_name": "WanVACEPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanVACETransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if entry.two_experts:
        index["transformer_2"] = ["diffusers", "WanVACETransformer3DModel"]
        index["boundary_ratio"] = entry.boundary_ratio
    return index


def _record_all(folder: Path) -> None:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    write_records(folder, files)


def build_layout(root: Path, records: bool = True) -> Path:
    shared = root / SHARED_FOLDER
    _json(shared / "text_encoder/config.json", {"d_model": 4})
    _safetensors(shared / "text_encoder/model.safetensors", {"enc.w": torch.randn(3, 4)})
    _json(shared / "tokenizer/tokenizer_config.json", {"pad_token": "<pad>"})
    _json(shared / "tokenizer/tokenizer.json", {"model": {"type": "WordLevel"}})
    _diffusers_component(shared / "vae")
    for entry in MODELS.values():
        folder = root / entry.folder
        _json(folder / "model_index.json", _model_index(entry))
        _json(folder / "scheduler/scheduler_config.json", {"_class_name": "UniPCMultistepScheduler"})
        _diffusers_component(folder / "transformer", sharded=entry.key == "wan-vace-14b")
        if entry.two_experts:
            _diffusers_component(folder / "transformer_2")
        dl.link_shared(folder, root)
    if records:
        for folder in [shared] + [root / e.folder for e in MODELS.values()]:
            _record_all(folder)
    return root


def _problems(report, key, kind):
    return [p for p in report.entries[key].problems if p.kind == kind]


def _paths(report, key, kind):
    return [p.path for p in _problems(report, key, kind)]


# ---------------------------------------------------------------- check


def test_manifest_required_paths():
    e22 = MODELS["wan-22-vace-fun-a14b"]
    req = required_paths(e22)
    assert {"model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
            "transformer_2/config.json", "text_encoder/config.json", "vae/config.json",
            "tokenizer/tokenizer_config.json"} <= set(req)  # fmt: skip
    assert "transformer_2/config.json" not in required_paths(MODELS["wan-vace-14b"])
    assert ("tokenizer/tokenizer.json", "tokenizer/spiece.model") in required_any(e22)


def test_complete_layout_is_ok(tmp_path):
    report = check(build_layout(tmp_path))
    assert all(report.entries[k].status == "ok" for k in (SHARED_FOLDER, *MODELS)), report.render()
    assert all(report.entries[k].status == "absent" for k in EXTRAS)  # no annotators: endpoints are still ready
    assert report.ok
    assert all(report.ok_for(key) for key in MODELS)
    assert report.endpoints() == {"fal-ai/wan-vace-14b": ["wan-vace-14b"],
                                  "fal-ai/wan-22-vace-fun-a14b": ["wan-22-vace-fun-a14b"],
                                  "fal-ai/wan-vace-apps": ["wan-vace-14b"]}  # fmt: skip
    text = report.render()
    assert "wan-22-vace-fun-a14b" in text and "ready" in text
    assert report.entries["wan-vace-14b"].files >= 8  # own files plus the linked shared ones


def test_absent_model_is_not_an_error(tmp_path):
    build_layout(tmp_path)
    shutil.rmtree(tmp_path / D13)
    report = check(tmp_path)
    assert report.entries["wan-vace-1.3b"].status == "absent"
    assert not report.ok_for("wan-vace-1.3b")
    assert report.ok and report.endpoints()["fal-ai/wan-vace-14b"] == ["wan-vace-14b"]


def test_missing_shard(tmp_path):
    build_layout(tmp_path, records=False)
    (tmp_path / D14 / SHARD).unlink()
    report = check(tmp_path)
    assert report.entries["wan-vace-14b"].status == "missing"
    assert SHARD in _paths(report, "wan-vace-14b", MISSING)
    assert not report.ok_for("wan-vace-14b") and report.endpoints()["fal-ai/wan-vace-14b"] == []
    assert report.ok_for("wan-22-vace-fun-a14b")
    assert "NOT READY" in report.render()


def test_missing_file_recorded_at_download(tmp_path):
    build_layout(tmp_path)
    (tmp_path / SHARED_FOLDER / "tokenizer/tokenizer.json").unlink()
    report = check(tmp_path)
    for key in MODELS:  # every model links the shared tokenizer
        assert "tokenizer/tokenizer.json" in _paths(report, key, MISSING), key
    assert "tokenizer/tokenizer.json" in _paths(report, SHARED_FOLDER, MISSING)


def test_shard_lacking_indexed_tensor(tmp_path):
    build_layout(tmp_path, records=False)
    _safetensors(tmp_path / D14 / SHARD, {"b.w": torch.randn(8)})  # "b.b" gone
    report = check(tmp_path)
    assert SHARD in _paths(report, "wan-vace-14b", CORRUPT)


def test_truncated_safetensors(tmp_path):
    build_layout(tmp_path, records=False)  # the header check alone must catch it
    path = tmp_path / D22 / "transformer_2/diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    report = check(tmp_path)
    problems = _problems(report, "wan-22-vace-fun-a14b", CORRUPT)
    assert [p.path for p in problems] == ["transformer_2/diffusion_pytorch_model.safetensors"]
    assert "truncated" in problems[0].detail
    assert report.ok_for("wan-vace-14b") and not report.ok_for("wan-22-vace-fun-a14b")

    path.write_bytes(data[:5])  # not even a length prefix
    assert check(tmp_path).entries["wan-22-vace-fun-a14b"].status == "corrupt"


def test_broken_symlink(tmp_path):
    build_layout(tmp_path)
    link = tmp_path / D13 / "vae"
    link.unlink()
    os.symlink("../wan-shared/no-such-vae", link)
    report = check(tmp_path)
    assert "vae" in _paths(report, "wan-vace-1.3b", BROKEN_LINK)
    assert report.entries["wan-vace-1.3b"].status == "missing"
    assert report.ok_for("wan-vace-14b")


def test_removed_shared_folder_breaks_every_model(tmp_path):
    build_layout(tmp_path)
    shutil.rmtree(tmp_path / SHARED_FOLDER / "text_encoder")
    report = check(tmp_path)
    for key in MODELS:
        assert "text_encoder" in _paths(report, key, BROKEN_LINK), key
    assert not report.ok


def test_size_mismatch_against_records(tmp_path):
    build_layout(tmp_path)
    path = tmp_path / D14 / "scheduler/scheduler_config.json"
    path.write_text(path.read_text() + "\n\n")  # still valid JSON; only the record can tell
    report = check(tmp_path)
    assert _paths(report, "wan-vace-14b", CORRUPT) == ["scheduler/scheduler_config.json"]
    assert report.ok_for("wan-22-vace-fun-a14b") and report.ok_for("wan-vace-1.3b")


def test_deep_check_catches_same_size_sha_mismatch(tmp_path):
    build_layout(tmp_path)
    path = tmp_path / SHARED_FOLDER / "vae/diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor data: header and size unchanged
    path.write_bytes(bytes(data))
    assert check(tmp_path).ok_for("wan-vace-14b")
    deep = check(tmp_path, deep=True)
    for key in MODELS:
        assert "vae/diffusion_pytorch_model.safetensors" in _paths(deep, key, CORRUPT), key
    assert "sha256" in deep.render()


def test_two_experts_without_boundary_ratio(tmp_path):
    build_layout(tmp_path, records=False)
    path = tmp_path / D22 / "model_index.json"
    index = json.loads(path.read_text())
    del index["boundary_ratio"]
    path.write_text(json.dumps(index))
    report = check(tmp_path)
    assert "model_index.json" in _paths(report, "wan-22-vace-fun-a14b", CORRUPT)


# ---------------------------------------------------------------- download, hub faked


def _st_bytes(tmp: Path, tensors) -> bytes:
    _safetensors(tmp, tensors)
    return tmp.read_bytes()


class FakeHub:
    """Repos as {repo_id: {path: bytes}}; files whose name ends in .safetensors are 'LFS'."""

    def __init__(self, tmp: Path):
        scratch = tmp / "scratch.safetensors"
        tokenizer = {"tokenizer/tokenizer_config.json": b"{}", "tokenizer/tokenizer.json": b'{"model": {}}'}
        own = {"scheduler/scheduler_config.json": b'{"_class_name": "UniPCMultistepScheduler"}',
               "transformer/config.json": b'{"dim": 4}',
               "transformer/diffusion_pytorch_model.safetensors": _st_bytes(scratch, {"w": torch.ones(4)})}  # fmt: skip
        shared = {"text_encoder/config.json": b'{"d_model": 4}',
                  "text_encoder/model.safetensors": _st_bytes(scratch, {"e": torch.ones(2)}),
                  "vae/config.json": b"{}",
                  "vae/diffusion_pytorch_model.safetensors": _st_bytes(scratch, {"v": torch.ones(3)}),
                  **tokenizer}  # fmt: skip
        index = _model_index(MODELS["wan-vace-14b"])
        index22 = dict(_model_index(MODELS["wan-22-vace-fun-a14b"]))
        del index22["boundary_ratio"]  # the community conversion may lack it
        self.repos = {
            "Wan-AI/Wan2.1-VACE-14B-diffusers": {"model_index.json": json.dumps(index).encode(), **own, **shared},
            "Wan-AI/Wan2.1-VACE-1.3B-diffusers": {"model_index.json": json.dumps(index).encode(), **own, **shared},
            "linoyts/Wan2.2-VACE-Fun-14B-diffusers": {
                "model_index.json": json.dumps(index22).encode(), **own,
                "transformer_2/config.json": b'{"dim": 4}',
                "transformer_2/diffusion_pytorch_model.safetensors": _st_bytes(scratch, {"w2": torch.ones(4)}),
                **shared},
        }  # fmt: skip
        self.commit = "c0ffee" * 6 + "abcd"
        self.calls: list[tuple[str, tuple[str, ...], Path]] = []
        self.fail_metadata = False
        hub = self

        class Api:
            def model_info(self, repo_id, *, revision=None, files_metadata=False, token=None, **kw):
                assert files_metadata
                if hub.fail_metadata:
                    raise ConnectionError("offline")
                siblings = []
                for name, data in hub.repos[repo_id].items():
                    lfs = None
                    if name.endswith(".safetensors"):
                        lfs = SimpleNamespace(size=len(data), sha256=hashlib.sha256(data).hexdigest(), pointer_size=130)
                    siblings.append(SimpleNamespace(rfilename=name, size=len(data), blob_id="x", lfs=lfs))
                return SimpleNamespace(sha=hub.commit, siblings=siblings)

        self.Api = Api

    def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None, local_dir=None, token=None, **kw):
        from huggingface_hub.utils import filter_repo_objects

        assert revision == (self.commit if not self.fail_metadata else "main")
        self.calls.append((repo_id, tuple(allow_patterns), Path(local_dir)))
        files = self.repos[repo_id]
        for name in filter_repo_objects(list(files), allow_patterns=allow_patterns):
            path = Path(local_dir) / name
            if path.exists():  # like the hub client at a pinned commit: keep what is there
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[name])
        (Path(local_dir) / ".cache/huggingface").mkdir(parents=True, exist_ok=True)
        return str(local_dir)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path)
    monkeypatch.setattr(dl, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(dl, "HfApi", fake.Api)
    return fake


def test_download_layout_links_and_boundary_ratio(tmp_path, hub, capsys):
    wd = tmp_path / "w"
    dl.download(["wan-vace-14b", "wan-22-vace-fun-a14b"], wd)

    shared_calls = [c for c in hub.calls if c[2] == wd / SHARED_FOLDER]
    assert len(shared_calls) == 1 and hub.calls[0] == shared_calls[0]  # once, and first
    assert shared_calls[0][:2] == ("Wan-AI/Wan2.1-VACE-1.3B-diffusers", ("text_encoder/*", "tokenizer/*", "vae/*"))
    for folder in (D14, D22):
        for name in SHARED_COMPONENTS:
            link = wd / folder / name
            assert link.is_symlink() and os.readlink(link) == f"../{SHARED_FOLDER}/{name}"
    assert not (wd / D13).exists()
    assert not (wd / D14 / "transformer_2").exists()  # not in that entry's patterns

    assert json.loads((wd / D22 / "model_index.json").read_text())["boundary_ratio"] == 0.875
    assert "boundary_ratio" not in json.loads((wd / D14 / "model_index.json").read_text())

    rec = read_records(wd / D22)
    lfs = hub.repos["linoyts/Wan2.2-VACE-Fun-14B-diffusers"]["transformer_2/diffusion_pytorch_model.safetensors"]
    assert rec["transformer_2/diffusion_pytorch_model.safetensors"]["sha256"] == hashlib.sha256(lfs).hexdigest()
    assert rec["model_index.json"]["sha256"] == sha256_file(wd / D22 / "model_index.json")  # after the fix-up
    assert rec["model_index.json"]["commit"] == hub.commit
    assert "text_encoder/model.safetensors" in read_records(wd / SHARED_FOLDER)

    report = check(wd, deep=True)
    assert report.ok_for("wan-vace-14b") and report.ok_for("wan-22-vace-fun-a14b"), report.render()
    assert report.entries["wan-vace-1.3b"].status == "absent"
    out = capsys.readouterr().out
    assert "[wan-22-vace-fun-a14b] ok" in out and "boundary_ratio" in out


def test_download_refetches_damaged_file(tmp_path, hub):
    wd = tmp_path / "w"
    dl.download(["wan-vace-1.3b"], wd)
    path = wd / D13 / "transformer/diffusion_pytorch_model.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-4])
    assert check(wd).entries["wan-vace-1.3b"].status == "corrupt"
    dl.download(["wan-vace-1.3b"], wd)
    assert path.read_bytes() == good
    assert check(wd, deep=True).ok_for("wan-vace-1.3b")


def test_download_without_hub_metadata_hashes_locally(tmp_path, hub):
    hub.fail_metadata = True
    wd = tmp_path / "w"
    dl.download(["wan-vace-1.3b"], wd)
    rec = read_records(wd / D13)
    path = wd / D13 / "transformer/diffusion_pytorch_model.safetensors"
    assert rec["transformer/diffusion_pytorch_model.safetensors"]["sha256"] == sha256_file(path)
    assert check(wd, deep=True).ok_for("wan-vace-1.3b")


def test_link_shared_keeps_non_empty_folder(tmp_path):
    folder = tmp_path / "m"
    (folder / "vae").mkdir(parents=True)  # empty: replaced
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder/config.json").write_text("{}")  # real files: kept
    os.symlink("../elsewhere/tokenizer", folder / "tokenizer")  # wrong link: re-pointed
    dl.link_shared(folder, tmp_path)
    assert os.readlink(folder / "vae") == f"../{SHARED_FOLDER}/vae"
    assert os.readlink(folder / "tokenizer") == f"../{SHARED_FOLDER}/tokenizer"
    assert not (folder / "text_encoder").is_symlink()


def test_unknown_key(tmp_path):
    with pytest.raises(ValueError):
        dl.download(["nope"], tmp_path)
    with pytest.raises(ValueError):
        check(tmp_path, keys=["nope"])
