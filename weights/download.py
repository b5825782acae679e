"""Fetch real weights from the Hugging Face hub into the layout of ``weights/LAYOUT.md``.

Per entry: resolve the source revision to a commit (with the hub's per-file LFS sizes and sha256), drop local files
whose size is wrong so they are fetched again, ``snapshot_download`` the entry's patterns into its folder, take the
files a source names in ``extract`` out of its downloaded zips, apply fix-ups (``boundary_ratio``), link the shared
components, and write ``.vace-files.json`` for ``check``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import filter_repo_objects

from pipelines.manifest import ENTRIES, SHARED, ModelEntry, Source, WeightEntry
from weights.check import check
from weights.records import read_records, sha256_file, write_records
from weights.shared_links import link_shared


@dataclass
class _HubFile:
    size: int | None
    sha256: str | None  # LFS sha256; None for small git-stored files


def download(keys: list[str], weights_dir: Path, token: str | None = None) -> None:
    """Download the entries ``keys`` (model keys such as ``wan-vace-14b``, or any manifest key) into weights_dir.

    The shared text encoder, tokenizer and VAE are fetched once into ``wan-shared/`` whenever a model needs them.
    Re-running is cheap: files already there at the same commit are kept.
    """
    weights_dir = Path(weights_dir)
    unknown = [k for k in keys if k not in ENTRIES]
    if unknown:
        raise ValueError(f"unknown weight keys {unknown}; known: {list(ENTRIES)}")
    entries = [ENTRIES[k] for k in dict.fromkeys(keys)]
    if any(isinstance(e, ModelEntry) and e.uses_shared for e in entries) and SHARED not in entries:
        entries.insert(0, SHARED)
    entries.sort(key=lambda e: e is not SHARED)  # shared first: models link to it

    for entry in entries:
        folder = weights_dir / entry.folder
        folder.mkdir(parents=True, exist_ok=True)
        _log(entry, f"-> {folder} (~{entry.approx_size_gb:g} GB)")
        fetched = []
        for source in entry.sources:
            commit, hub_files = _fetch(entry, source, folder, token)
            fetched.append((source, commit, hub_files, extract_from_zips(entry, source, folder)))
        if isinstance(entry, ModelEntry):
            if entry.boundary_ratio is not None:
                _ensure_boundary_ratio(entry, folder / "model_index.json", entry.boundary_ratio)
            if entry.uses_shared:
                for note in link_shared(folder, weights_dir):
                    print(f"[{folder.name}] {note}", flush=True)
        for source, commit, hub_files, extracted in fetched:
            _record(entry, folder, source, commit, hub_files, extracted)

    report = check(weights_dir, keys=[e.key for e in entries])
    for key, e in report.entries.items():
        more = f": {len(e.problems)} problem(s), see `vace weights check`" if e.problems else ""
        print(f"[{key}] {e.status}{more}", flush=True)


def _log(entry: WeightEntry, msg: str) -> None:
    print(f"[{entry.key}] {msg}", flush=True)


def _fetch(entry: WeightEntry, source: Source, folder: Path, token: str | None) -> tuple[str, dict[str, _HubFile]]:
    """Download one source; returns the commit it came from and the hub's file metadata ({} when unavailable)."""
    commit, hub_files = _hub_metadata(entry, source, token)
    _drop_damaged(entry, source, folder, hub_files)
    _log(entry, f"downloading {source.repo_id}@{commit[:12]}: {', '.join(source.allow_patterns)}")
    snapshot_download(
        source.repo_id,
        revision=commit,
        allow_patterns=list(source.allow_patterns),
        local_dir=folder,
        token=token,
    )
    return commit, hub_files


def _hub_metadata(entry: WeightEntry, source: Source, token: str | None) -> tuple[str, dict[str, _HubFile]]:
    """Resolve the revision to a commit and read per-file sizes and LFS sha256 for the source's patterns.

    Best effort: if the metadata call fails, download by revision and hash locally afterwards; snapshot_download
    then raises the real error (auth, network) if there is one.
    """
    try:
        info = HfApi().model_info(source.repo_id, revision=source.revision, files_metadata=True, token=token)
    except Exception as e:  # noqa: BLE001 - any failure here only costs us the hub checksums
        _log(entry, f"no file metadata from the hub for {source.repo_id} ({type(e).__name__}: {e}); hashing locally")
        return source.revision, {}
    wanted = _selected([s.rfilename for s in info.siblings or []], source)
    files = {
        s.rfilename: _HubFile(size=s.lfs.size if s.lfs else s.size, sha256=s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
        if s.rfilename in wanted
    }
    return info.sha or source.revision, files


def _drop_damaged(entry: WeightEntry, source: Source, folder: Path, hub_files: dict[str, _HubFile]) -> None:
    """Delete local files whose size differs from the hub's (or, offline, the recorded) size, so they are fetched
    again: at a pinned commit snapshot_download trusts any file it already has."""
    expected = {name: rec.get("size") for name, rec in read_records(folder).items() if rec.get("size") is not None}
    expected |= {name: f.size for name, f in hub_files.items() if f.size is not None and f.sha256}
    for name in sorted(_selected(expected, source)):
        path = folder / name
        if path.is_file() and not path.is_symlink() and path.stat().st_size != expected[name]:
            _log(entry, f"{name}: size {path.stat().st_size} != {expected[name]}, fetching it again")
            path.unlink()


def extract_from_zips(entry: WeightEntry, source: Source, folder: Path) -> dict[str, str]:
    """Take each name of ``source.extract`` out of the source's downloaded ``.zip`` files into ``folder``.

    The member used is the one regular file whose basename is the name, wherever it sits in the archive; members with
    an absolute path or a ``..`` component (zip-slip), directories and symlinks are refused. A file already there
    with the member's size and CRC-32 is kept. Returns ``{name: "<zip>/<member>"}`` for each name now in place; a name
    no zip holds is only logged (``check`` then reports it missing). Raises ValueError when several members match.
    """
    extracted: dict[str, str] = {}
    if not source.extract:
        return extracted
    local = [p.relative_to(folder).as_posix() for p in _files(folder)]
    archives = sorted(n for n in _selected(local, source) if n.lower().endswith(".zip"))
    for name in source.extract:
        matches = []
        for archive in archives:
            with zipfile.ZipFile(folder / archive) as zf:
                for info in zf.infolist():
                    if PurePosixPath(info.filename.replace("\\", "/")).name != name:
                        continue
                    refused = _unsafe_member(info)
                    if refused:
                        _log(entry, f"refusing {archive}:{info.filename} ({refused})")
                    else:
                        matches.append((archive, info))
        if not matches:
            _log(entry, f"WARNING no regular file named {name} in {', '.join(archives) or 'any downloaded zip'}")
            continue
        if len(matches) > 1:
            found = ", ".join(f"{a}:{i.filename}" for a, i in matches)
            raise ValueError(f"[{entry.key}] several zip members could be {name}: {found}")
        archive, info = matches[0]
        target = folder / name
        if _same_as_member(target, info):
            _log(entry, f"{name} already extracted from {archive}")
        else:
            _log(entry, f"extracting {archive}:{info.filename} -> {name}")
            tmp = folder / f".{name}.part"  # hidden: ignored by check and the loaders until complete
            try:
                with zipfile.ZipFile(folder / archive) as zf, zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * 1024 * 1024)  # zipfile checks the CRC-32 at the end
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        extracted[name] = f"{archive}/{info.filename}"
    return extracted


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be extracted, or None: only relative, ``..``-free paths to regular files."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "path leaves the archive's folder"
    kind = stat.S_IFMT(info.external_attr >> 16)  # unix file type when the archiver stored one (0 when not)
    if info.is_dir() or kind not in (0, stat.S_IFREG):
        return "not a regular file"
    return None


def _same_as_member(path: Path, info: zipfile.ZipInfo) -> bool:
    if not path.is_file() or path.is_symlink() or path.stat().st_size != info.file_size:
        return False
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(16 * 1024 * 1024):
            crc = zlib.crc32(block, crc)
    return crc == info.CRC


def _ensure_boundary_ratio(entry: WeightEntry, path: Path, ratio: float) -> None:
    """Two-expert pipelines need boundary_ratio in model_index.json; some conversions leave it out."""
    index = json.loads(path.read_text())
    if index.get("boundary_ratio") is not None:
        return
    index["boundary_ratio"] = ratio
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, path)  # also replaces a symlink instead of writing through it
    _log(entry, f"wrote boundary_ratio={ratio} into {path.name}")


def _record(
    entry: WeightEntry,
    folder: Path,
    source: Source,
    commit: str,
    hub_files: dict[str, _HubFile],
    extracted: dict[str, str] | None = None,
) -> None:
    """Write size and sha256 of the source's files into folder/.vace-files.json.

    LFS files get the hub's size and sha256 (so a bad download shows up in check); other files, small and possibly
    fixed up by us, are measured locally, and so are the files taken out of zips (``extracted``: name -> member),
    whose record also names the zip member.
    """
    extracted = extracted or {}
    old = read_records(folder)
    stale = _selected(old, source) | set(source.extract)  # re-measured below; gone if no longer on disk
    records = {name: rec for name, rec in old.items() if name not in stale}
    for name in sorted(_selected([p.relative_to(folder).as_posix() for p in _files(folder)], source)):
        path = folder / name
        size = path.stat().st_size
        hub = hub_files.get(name)
        if hub and hub.sha256 and hub.size is not None:
            if hub.size != size:
                _log(entry, f"WARNING {name}: {size} bytes on disk, the hub says {hub.size}")
            size, sha = hub.size, hub.sha256
        else:
            if size > 100_000_000:
                _log(entry, f"hashing {name} ({size / 1e9:.1f} GB)")
            sha = sha256_file(path)
        records[name] = {"size": size, "sha256": sha, "repo_id": source.repo_id, "commit": commit}
    for name, member in sorted(extracted.items()):
        path = folder / name
        records[name] = {"size": path.stat().st_size, "sha256": sha256_file(path), "repo_id": source.repo_id,
                         "commit": commit, "extracted_from": member}  # fmt: skip
    write_records(folder, records)
    _log(entry, f"recorded {len(records)} file(s) in {folder.name}/.vace-files.json")


def _selected(names: Iterable[str], source: Source) -> set[str]:
    """The names that the source's allow_patterns select, matched exactly as snapshot_download matches them."""
    return set(filter_repo_objects(list(names), allow_patterns=list(source.allow_patterns)))


def _files(folder: Path) -> Iterator[Path]:
    """Regular files under folder, not following symlinks, skipping hidden names (.cache, records)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and not path.is_symlink():
                yield path
