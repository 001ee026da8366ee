"""Write a Hugging Face Hub cache by hand, in the layout ``huggingface_hub`` itself writes.

``huggingface_hub.snapshot_download`` / ``hf_hub_download`` with ``HF_HUB_OFFLINE=1`` (or
``local_files_only=True``) then read it through their real code paths::

    <cache>/datasets--<org>--<name>/
        refs/<branch or tag>              the commit hash (no newline)
        blobs/<sha256 or git sha1>        file contents (LFS files are named by sha256)
        snapshots/<commit>/<path>         relative symlinks into blobs/
        trees/<commit>.json               the repo's full file listing at that commit

A partial download (``allow_patterns``) leaves some listed files out of the snapshot;
``files=`` reproduces that.

Example:
    >>> snap = populate_hub_cache(tmp_path / "hub", "org/name", store_folder, files=["manifest.json"])
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

#: Extensions the Hub stores through LFS (their blobs are named by sha256).
_LFS_SUFFIXES = (".safetensors", ".parquet", ".bin", ".arrow")


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_files(folder: str | os.PathLike) -> list[str]:
    """Every file under ``folder`` as a sorted list of ``/``-separated relative paths."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def populate_hub_cache(cache_dir: str | os.PathLike, repo_id: str, folder: str | os.PathLike, *,
                       files: Iterable[str] | None = None, refs: Iterable[str] = ("main",),
                       commit: str | None = None, repo_type: str = "dataset", write_tree: bool = True) -> Path:
    """Cache the contents of ``folder`` as commit ``commit`` of ``repo_id``; return the snapshot folder.

    Args:
        cache_dir: the cache root (what ``HF_HUB_CACHE`` / ``cache_dir=`` point to).
        repo_id: ``"org/name"``.
        folder: the repo's files at that commit.
        files: the files actually downloaded into the snapshot (default: all); the tree listing
            always lists every file of ``folder``.
        refs: branches or tags to point at the commit.
        commit: the commit hash (default: derived from the files' contents).
        repo_type: ``"dataset"`` or ``"model"``.
        write_tree: write ``trees/<commit>.json`` (what a real ``snapshot_download`` leaves).
    """
    folder = Path(folder)
    everything = repo_files(folder)
    chosen = everything if files is None else list(files)
    unknown = sorted(set(chosen) - set(everything))
    if unknown:
        raise FileNotFoundError(f"populate_hub_cache: {unknown} are not files of {folder}")
    contents = {f: (folder / f).read_bytes() for f in everything}
    tree = {}
    for f, data in contents.items():
        entry = {"size": len(data), "blob_id": _git_sha1(data)}
        if f.endswith(_LFS_SUFFIXES):
            entry.update(lfs_sha256=hashlib.sha256(data).hexdigest(), lfs_size=len(data))
        tree[f] = entry
    if commit is None:
        commit = hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()
    org, name = repo_id.split("/")
    storage = Path(cache_dir) / f"{repo_type}s--{org}--{name}"
    snapshot = storage / "snapshots" / commit
    for f in chosen:
        entry = tree[f]
        blob_name = entry.get("lfs_sha256") or entry["blob_id"]
        blob = storage / "blobs" / blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(contents[f])
        link = snapshot / f
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        ref_path = storage / "refs" / ref
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(commit)
    if write_tree:
        trees = storage / "trees"
        trees.mkdir(parents=True, exist_ok=True)
        (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}, indent=1))
    return snapshot
