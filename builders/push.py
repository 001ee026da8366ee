"""Publish an exported folder to a Hugging Face Hub dataset repo, verified first and tagged.

Usage::

    python builders/push.py runs/cifar100-plus --repo-id imagenet-plus/cifar100-plus [--revision-tag v1]

Steps: :func:`check_publish_folder` (``imagenet_plus.store.verify(full=True)``: every file
the manifest lists is present with its sha256; the Parquet export and the card match the
manifest; nothing else is in the folder besides ``README.md``, ``data/`` and
``.gitattributes``), then ``HfApi.create_repo(exist_ok=True)``, ``HfApi.upload_folder``
with exactly those files (re-runnable after an interruption: the Hub skips files it
already has), and ``HfApi.create_tag`` on the uploaded commit (an existing tag on that
same commit is fine; one on another commit is an error).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagenet_plus.errors import ReinforcementError, StoreError  # noqa: E402

__all__ = ["PushConfig", "PushResult", "check_publish_folder", "default_tag", "push_to_hub", "main"]

#: Files of a publish folder that are not store files.
_EXTRA_ALLOWED = ("README.md", ".gitattributes")
#: Never uploaded by ``upload_folder`` (git metadata, huggingface_hub's local-dir cache): not checked.
_IGNORED_DIRS = (".git", ".cache/huggingface")
_TAG_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class PushConfig:
    """Settings of one push.

    Args:
        folder: the publish folder (store + ``data/`` + ``README.md``, from ``builders/export.py``).
        repo_id: the Hub dataset repo, ``"org/name"``.
        revision_tag: tag for the uploaded commit (default: :func:`default_tag` of the manifest).
        private: create the repo private (only when it does not exist yet).
        commit_message: commit message (default: names the build).
        token: Hub token (default: the saved login).
    """

    folder: str
    repo_id: str
    revision_tag: str | None = None
    private: bool | None = None
    commit_message: str | None = None
    token: str | None = None


@dataclass
class PushResult:
    """What was pushed: the repo, the commit, the tag and the files sent."""

    repo_id: str
    commit: str
    tag: str
    files: list[str] = field(default_factory=list)
    url: str | None = None


def _folder_files(folder: Path) -> list[str]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if any(rel == d or rel.startswith(d + "/") for d in _IGNORED_DIRS):
            continue
        if p.is_file() or p.is_symlink():
            out.append(rel)
    return out


def _check_card(folder: Path, parquet: list[str]) -> None:
    from huggingface_hub import DatasetCard

    path = folder / "README.md"
    if not path.is_file():
        raise StoreError(f"{path}: missing; render the dataset card with builders/export.py")
    card = DatasetCard.load(path)
    configs = card.data.to_dict().get("configs") or []
    patterns = []
    for c in configs:
        files = c.get("data_files") or []
        for entry in files if isinstance(files, list) else [files]:
            paths = entry.get("path") if isinstance(entry, dict) else entry
            patterns += paths if isinstance(paths, list) else [paths]
    if not patterns:
        raise StoreError(f"{path}: the card's YAML declares no configs/data_files; re-render it with "
                         "builders/export.py --overwrite")
    unmatched = [p for p in parquet if not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    empty = [pat for pat in patterns if not any(fnmatch.fnmatch(p, pat) for p in parquet)]
    if unmatched or empty:
        raise StoreError(f"{path}: data_files {patterns} do not match the Parquet files {parquet} (unmatched files "
                         f"{unmatched}, patterns matching nothing {empty}); re-render the card with "
                         "builders/export.py --overwrite")


def check_publish_folder(folder: str | os.PathLike) -> tuple[list[str], object]:
    """Verify a publish folder completely; return the files to upload and the manifest.

    Args:
        folder: the publish folder.

    Returns:
        ``(files, manifest)``: every file to send (relative, ``/``-separated, sorted) and the
        store's manifest.

    Raises:
        IntegrityError: a store file is missing, truncated or has another sha256.
        StoreError: the Parquet export or the card do not match the store, or the folder holds
            files that are not part of the build (named, with the fix).
    """
    from imagenet_plus.hf import check_parquet
    from imagenet_plus.store import verify

    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: not a folder; pass the folder written by builders/export.py")
    manifest = verify(folder, full=True).manifest
    store_files = ["manifest.json", manifest.samples_file.file, *(s.file for s in manifest.shards)]
    parquet = check_parquet(folder, manifest)
    _check_card(folder, parquet)
    allowed = set(store_files) | set(parquet) | set(_EXTRA_ALLOWED)
    present = _folder_files(folder)
    extra = [f for f in present if f not in allowed]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise StoreError(f"{folder}: {len(extra)} file(s) are not part of the build ({shown}); a publish folder "
                         "holds only the store files its manifest lists, data/*.parquet, README.md and "
                         ".gitattributes: move the others out (leftover *.tmp files come from an interrupted "
                         "write and can be deleted)")
    return sorted(f for f in present if f in allowed), manifest


def default_tag(manifest) -> str:
    """The tag of a build: ``{dataset}-ns{A}-k{K}-seed{seed}-v{builder_version}`` (git-safe characters)."""
    raw = (f"{manifest.dataset}-ns{manifest.num_augmentations}-k{manifest.topk}-seed{manifest.seed}"
           f"-v{manifest.builder_version}")
    return _TAG_CHARS.sub("-", raw).strip("-.")


def _tag(api, repo_id: str, tag: str, commit: str, message: str, token) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message, repo_type="dataset", token=token)
        return
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status != 409:
            raise
    refs = api.list_repo_refs(repo_id, repo_type="dataset", token=token)
    target = next((t.target_commit for t in refs.tags if t.name == tag), None)
    if target == commit:
        return
    raise ReinforcementError(f"tag '{tag}' of dataset repo '{repo_id}' already points at commit {target}, not at "
                             f"the uploaded commit {commit}; pass another --revision-tag, or delete the old tag "
                             f"(HfApi().delete_tag('{repo_id}', tag='{tag}', repo_type='dataset')) if this build "
                             "replaces it")


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, revision_tag: str | None = None,
                private: bool | None = None, commit_message: str | None = None, token: str | None = None,
                api=None) -> PushResult:
    """Verify ``folder``, upload it to the dataset repo ``repo_id`` and tag the commit.

    Args:
        folder: the publish folder (from ``builders/export.py``).
        repo_id: ``"org/name"``.
        revision_tag: the tag (default :func:`default_tag`).
        private: create the repo private (when it does not exist yet).
        commit_message: commit message (default: names the build).
        token: Hub token (default: the saved login).
        api: an ``huggingface_hub.HfApi`` (default: a new one).

    Returns:
        A :class:`PushResult`.

    Raises:
        StoreError / IntegrityError: the folder does not verify (nothing is uploaded).
        ReinforcementError: the tag exists on another commit.

    Example:
        >>> push_to_hub("runs/cifar100-plus", "imagenet-plus/cifar100-plus", revision_tag="v1").commit
        '3f1c...'
    """
    from huggingface_hub import HfApi

    from imagenet_plus.hub import parse_repo_spec

    repo, revision = parse_repo_spec(repo_id)
    if revision is not None or repo != repo_id:
        raise ReinforcementError(f"--repo-id {repo_id!r}: pass a plain 'org/name' (the tag goes to --revision-tag)")
    files, manifest = check_publish_folder(folder)
    tag = revision_tag or default_tag(manifest)
    if _TAG_CHARS.search(tag) or not tag.strip("-."):
        raise ReinforcementError(f"--revision-tag {tag!r}: use letters, digits, '.', '_' and '-' only")
    api = api if api is not None else HfApi(token=token)
    message = commit_message or (f"Upload {manifest.dataset}/{manifest.split} reinforcements: "
                                 f"NS={manifest.num_augmentations}, K={manifest.topk}, seed={manifest.seed}, "
                                 f"builder {manifest.builder_version}")
    url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private, token=token)
    info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), allow_patterns=files,
                             commit_message=message, token=token)
    commit = info.oid
    _tag(api, repo_id, tag, commit, message, token)
    return PushResult(repo_id, commit, tag, files, str(url) if url is not None else None)


def main(config: PushConfig) -> PushResult:
    """Run one push (see :func:`push_to_hub`)."""
    return push_to_hub(config.folder, config.repo_id, revision_tag=config.revision_tag, private=config.private,
                       commit_message=config.commit_message, token=config.token)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="builders/push.py", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="the publish folder written by builders/export.py")
    p.add_argument("--repo-id", required=True, help="the Hub dataset repo, org/name")
    p.add_argument("--revision-tag", help="tag of the uploaded commit (default: from the manifest)")
    p.add_argument("--private", action="store_true", default=None, help="create the repo private")
    p.add_argument("--commit-message")
    p.add_argument("--token", help="Hub token (default: the saved login, `hf auth login`)")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ns = _parser().parse_args(argv)
    try:
        result = main(PushConfig(**vars(ns)))
    except ReinforcementError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"repo_id": result.repo_id, "commit": result.commit, "tag": result.tag,
                      "files": len(result.files)}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
