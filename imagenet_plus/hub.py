"""Finding a reinforcement store: a local folder, a Hub dataset repo, or a known dataset name.

:func:`resolve_reinforcements` turns what a user passes as ``reinforcements=``
into a local folder that :func:`imagenet_plus.store.open_store` can open:

* a local folder (``"runs/cifar100-plus"``, ``Path(...)``): returned as is;
* a Hub dataset repo, ``"org/name"`` or ``"org/name@revision"`` (a branch, a
  tag such as ``v1`` or a commit hash);
* a dataset name (``"imagenet"``, ``"cifar100"``, ...): the package's default
  repo for it (:mod:`imagenet_plus.registry`).

From the Hub only what is needed is fetched: ``manifest.json`` first, then
``samples.safetensors`` and the shards whose augmentation range intersects
``[0, num_augmentations)``, so ``num_augmentations=50`` of a 400-augmentation
build downloads the first augmentation block only. Everything goes through
the Hugging Face cache (``HF_HUB_CACHE``), so a second call, or a call with
``HF_HUB_OFFLINE=1``, reads the cache without touching the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import registry
from ._checks import check_choice
from .errors import StoreError
from .registry import DEFAULT_ORG

__all__ = ["DEFAULT_ORG", "REPO_TYPE", "parse_repo_spec", "required_files", "resolve_store", "open_reinforcements",
           "resolve_manifest", "resolve_identity", "resolve_reinforcements"]

#: Stores live in Hub *dataset* repos.
REPO_TYPE = "dataset"

_MANIFEST = "manifest.json"
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"org/name@revision"`` into ``("org/name", "revision")`` (revision ``None`` if absent).

    Dataset names with a default repo in :mod:`imagenet_plus.registry` map to it.

    Raises:
        StoreError: ``spec`` is neither ``org/name[@revision]`` nor a known dataset name.
    """
    repo, sep, revision = spec.partition("@")
    if sep and not revision:
        raise StoreError(f"reinforcements={spec!r}: empty revision after '@'; write 'org/name@v1' "
                         "(a branch, tag or commit hash) or drop the '@'")
    repo = registry.default_repo(repo) or repo
    if not _REPO_RE.match(repo) or ".." in repo:
        known = ", ".join(sorted(n for n in registry.names() if registry.default_repo(n)))
        raise StoreError(f"reinforcements={spec!r} is not an existing folder, a Hub dataset repo id "
                         f"('org/name' or 'org/name@revision') or a known dataset name ({known}); "
                         "pass the folder written by the builder or a repo id")
    return repo, (revision or None)


def required_files(manifest, num_augmentations: int | None = None, *, source: str = "manifest") -> list[str]:
    """The store files needed to read augmentations ``[0, num_augmentations)`` of every sample.

    Args:
        manifest: the store's :class:`imagenet_plus.store.Manifest`.
        num_augmentations: how many augmentations per sample are wanted (``None``: all stored).
        source: what the manifest came from, for error messages.

    Returns:
        ``manifest.json``, the samples file and the shards whose augmentation range
        intersects ``[0, num_augmentations)``, as paths relative to the store root.

    Raises:
        StoreError: ``num_augmentations`` is not in ``[1, manifest.num_augmentations]``.
    """
    stored = manifest.num_augmentations
    if num_augmentations is None:
        num_augmentations = stored
    if isinstance(num_augmentations, bool) or int(num_augmentations) != num_augmentations \
            or not 1 <= num_augmentations <= stored:
        raise StoreError(f"num_augmentations={num_augmentations!r}: {source} stores {stored} augmentations per "
                         f"sample; pass an integer in [1, {stored}] or None for all")
    if manifest.samples_file is None:
        raise StoreError(f"{source}: the manifest lists no samples file; the build did not finish, "
                         "rerun it to completion or re-download the store")
    files = [_MANIFEST, manifest.samples_file.file]
    files += [s.file for s in manifest.shards if s.augs[0] < num_augmentations]
    return files


def _load_manifest(path: Path):
    from .store import Manifest  # the store imports numpy/safetensors; keep `import imagenet_plus.hub` light

    return Manifest.load(path)


def _missing(folder: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _describe_missing(missing: list[str]) -> str:
    shown = ", ".join(missing[:3])
    return shown + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")


def _resolve_local(folder: Path, num_augmentations: int | None, shards: bool = True) -> Path:
    manifest = _load_manifest(resolve_manifest_file(folder).parent)
    files = required_files(manifest, num_augmentations, source=str(folder / _MANIFEST))
    missing = _missing(folder, files if shards else files[:2])
    if missing:
        have = _cached_augmentations(manifest, folder)
        hint = f"pass num_augmentations <= {have} (the blocks present) or " if have else ""
        raise StoreError(f"reinforcements={str(folder)!r}: {len(missing)} store file(s) listed by the manifest are "
                         f"missing ({_describe_missing(missing)}); {hint}copy or download the complete store")
    return folder


def _cached_augmentations(manifest, folder: Path) -> int:
    """The largest ``n`` such that every file needed for ``n`` augmentations is present (0 if none)."""
    best = 0
    for a1 in sorted({s.augs[1] for s in manifest.shards}):
        if _missing(folder, required_files(manifest, a1)):
            break
        best = a1
    return best


def _offline(local_files_only: bool) -> bool:
    from huggingface_hub import constants

    return bool(local_files_only) or bool(constants.is_offline_mode())


def _hub_error(err: Exception, repo_id: str, revision: str | None, what: str, offline: bool,
               cache_dir) -> StoreError:
    """Translate a huggingface_hub exception into a StoreError naming the repo, revision, file and fix."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    rev = revision or "main"
    where = f"dataset repo '{repo_id}' at revision '{rev}'"
    cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    if isinstance(err, LocalEntryNotFoundError):
        if offline:
            return StoreError(
                f"{what} of {where} is not in the Hugging Face cache ({cache}) and downloads are disabled "
                "(HF_HUB_OFFLINE=1 or local_files_only=True); set HF_HUB_OFFLINE=0 and local_files_only=False "
                f"to download it, check that revision '{rev}' exists (a branch, tag or commit hash), "
                "or pass a local folder")
        return StoreError(f"{what} of {where} could not be downloaded and is not in the Hugging Face cache "
                          f"({cache}) ({err.__class__.__name__}); check your connection and retry, "
                          "or pass a local folder")
    if isinstance(err, GatedRepoError):
        return StoreError(f"{where} is gated; accept its terms on https://huggingface.co/datasets/{repo_id} "
                          "and log in (`hf auth login`), then retry")
    if isinstance(err, RepositoryNotFoundError):
        return StoreError(f"{where} was not found on the Hub (or it is private and you are not logged in); "
                          "check the repo id, log in with `hf auth login`, or pass a local folder")
    if isinstance(err, RevisionNotFoundError):
        return StoreError(f"{where}: revision '{rev}' does not exist; check the revision (a branch, a tag "
                          f"such as 'v1', or a commit hash; the repo's tags are listed on "
                          f"https://huggingface.co/datasets/{repo_id}) or drop it to use 'main'")
    if isinstance(err, EntryNotFoundError):
        return StoreError(f"{where} has no {what}; it is not a reinforcement store (or the upload was "
                          "interrupted): check the repo id and revision, or re-publish it with builders/push.py")
    if isinstance(err, HfHubHTTPError):
        return StoreError(f"downloading {what} of {where} failed ({err}); retry later or pass a local folder")
    return StoreError(f"downloading {what} of {where} failed ({err.__class__.__name__}: {err}); check your "
                      "connection and retry, set HF_HUB_OFFLINE=1 to use the cache only, or pass a local folder")


def _resolve_hub(repo_id: str, revision: str | None, num_augmentations: int | None, *, cache_dir,
                 local_files_only: bool, token, shards: bool = True) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline(local_files_only)
    manifest_path = _download_manifest(repo_id, revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                       token=token)
    manifest = _load_manifest(manifest_path)
    source = f"{repo_id}@{revision or 'main'}/{_MANIFEST}"
    files = required_files(manifest, num_augmentations, source=source)
    files = files if shards else files[:2]  # manifest.json, samples.safetensors
    # The manifest's snapshot folder is named by its commit: fetch the shards of that same
    # commit, even if the branch moves meanwhile.
    commit = manifest_path.parent.name
    try:
        folder = Path(snapshot_download(repo_id, repo_type=REPO_TYPE, revision=commit, allow_patterns=files,
                                        cache_dir=cache_dir, local_files_only=bool(local_files_only),
                                        token=token))
    except LocalEntryNotFoundError as err:  # IncompleteSnapshotError, or one file neither cached nor downloadable
        if _missing(manifest_path.parent, files):
            raise _incomplete(repo_id, revision, manifest, manifest_path.parent, files, num_augmentations,
                              offline, err) from err
        raise _hub_error(err, repo_id, revision, "the store files", offline, cache_dir) from err
    except (OSError, ValueError) as err:
        raise _hub_error(err, repo_id, revision, "the store files", offline, cache_dir) from err
    if _missing(folder, files):
        raise _incomplete(repo_id, revision, manifest, folder, files, num_augmentations, offline, None)
    return folder


def _incomplete(repo_id, revision, manifest, folder: Path, files, num_augmentations, offline: bool,
                err: Exception | None) -> StoreError:
    missing = _missing(folder, files)
    have = _cached_augmentations(manifest, folder)
    want = manifest.num_augmentations if num_augmentations is None else num_augmentations
    hint = f", pass num_augmentations <= {have} (what the cache holds)" if have else ""
    if offline or err is None:
        fix = "downloads are disabled (HF_HUB_OFFLINE=1 or local_files_only=True): set HF_HUB_OFFLINE=0 and " \
              "local_files_only=False to download them"
    else:
        fix = f"they could not be downloaded ({err.__class__.__name__}): check your connection and retry"
    return StoreError(
        f"dataset repo '{repo_id}' at revision '{revision or 'main'}': {len(missing)} store file(s) needed for "
        f"num_augmentations={want} are missing from the cached snapshot {folder} "
        f"({_describe_missing(missing)}); {fix}{hint}, or pass a local folder")


def _parse_spec(spec, revision: str | None) -> tuple[Path | None, str | None, str | None]:
    """``(local_folder, None, None)`` or ``(None, repo_id, revision)`` for a store spec.

    A path to a store's ``manifest.json`` stands for its folder.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise StoreError(f"reinforcements must be a store folder, a Hub repo id ('org/name@revision') or an opened "
                         f"ReinforcementStore, got {type(spec).__name__}")
    local = Path(spec).expanduser()
    if local.name == _MANIFEST and local.is_file():
        local = local.parent
    if isinstance(spec, os.PathLike) or local.is_dir():
        return local.resolve(), None, None
    head = spec.partition("@")[0]
    if head.startswith((".", "/", "~")) or head.count("/") > 1 or "\\" in head:
        raise StoreError(f"reinforcements={spec!r}: folder not found; check the path (relative paths start from "
                         f"{os.getcwd()}) or pass a Hub repo id such as 'org/name'")
    repo_id, spec_revision = parse_repo_spec(spec)
    if spec_revision is not None and revision is not None and spec_revision != revision:
        raise StoreError(f"reinforcements={spec!r} names revision '{spec_revision}' but revision={revision!r} was "
                         "also passed; give the revision once")
    return None, repo_id, spec_revision or revision


def _unreachable(repo_id: str, revision: str | None, token) -> Exception | None:
    """One ``HEAD`` of the manifest, without retries: the error when the Hub gave no answer, else ``None``.

    ``hf_hub_download`` retries a connection error with a backoff (about 23 s) before it gives up;
    a Hub that cannot be reached at all is reported at once instead.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, _MANIFEST, repo_type=REPO_TYPE, revision=revision), token=token)
    except (HfHubHTTPError, ValueError):  # the Hub answered (404, 401, ...), or a bad id: hf_hub_download says which
        return None
    except Exception as err:  # no answer at all: DNS, connection refused, connect timeout, proxy
        return err
    return None


def _download_manifest(repo_id: str, revision: str | None, *, cache_dir, local_files_only: bool, token) -> Path:
    from huggingface_hub import hf_hub_download

    down = None if _offline(local_files_only) else _unreachable(repo_id, revision, token)
    try:
        return Path(hf_hub_download(repo_id, _MANIFEST, repo_type=REPO_TYPE, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only or down is not None, token=token))
    except (OSError, ValueError) as err:  # every huggingface_hub error is one of these
        if down is not None:
            raise _no_connection(down, repo_id, revision, cache_dir) from down
        raise _hub_error(err, repo_id, revision, _MANIFEST, _offline(local_files_only), cache_dir) from err


_FILES = ("records", "identity", "manifest")


def resolve_store(spec, num_augmentations: int | None = None, *, files: str = "records", check_local: bool = True,
                  revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """The one way from what a user names to a local store folder (every entry point calls it).

    Args:
        spec: a store folder, its ``manifest.json``, ``"org/name"`` or ``"org/name@revision"`` (a Hub
            dataset repo), or a dataset name of :mod:`imagenet_plus.registry` (its default repo).
        num_augmentations: augmentations per sample that will be read (``None``: all stored). From the
            Hub, only the shards covering ``[0, num_augmentations)`` are downloaded.
        files: what must be there: ``"records"`` (the manifest, the samples file and those shards),
            ``"identity"`` (the manifest and the samples file: keys, labels, sizes, fingerprints) or
            ``"manifest"``.
        check_local: check that a local folder holds them (``False``: return it as it is, for a caller
            that checks and reports every file itself, such as ``verify``).
        revision: branch, tag or commit of the repo (default ``main``; or write ``org/name@revision``).
        cache_dir: the Hugging Face cache (default ``HF_HUB_CACHE``).
        local_files_only: never touch the network, read the cache only (``None``: ``HF_HUB_OFFLINE``).
        token: Hub token for private repos (default: the saved login).

    Returns:
        The folder holding ``manifest.json`` (for a repo, its snapshot folder in the cache).

    Raises:
        StoreError: the spec is malformed, the folder or repo is not a store, the revision or a file is
            missing (online or in the offline cache); the message names the repo, revision or file and what to do.
    """
    check_choice(files, "files", _FILES)
    folder, repo_id, rev = _parse_spec(spec, revision)
    if folder is not None:
        if revision is not None:
            raise StoreError(f"revision={revision!r} applies to Hub repos, but reinforcements={str(spec)!r} is a local "
                             "folder; drop revision= or pass the repo id")
        if not check_local:
            return folder
        if files == "manifest":
            return resolve_manifest_file(folder).parent
        return _resolve_local(folder, num_augmentations, shards=files == "records")
    try:
        if files == "manifest":
            return _download_manifest(repo_id, rev, cache_dir=cache_dir, local_files_only=bool(local_files_only),
                                      token=token).parent
        return _resolve_hub(repo_id, rev, num_augmentations, cache_dir=cache_dir,
                            local_files_only=bool(local_files_only), token=token, shards=files == "records")
    except StoreError as err:
        raise _with_path_note(err, spec) from err.__cause__


def resolve_manifest_file(folder: Path) -> Path:
    """``folder/manifest.json``, or a StoreError saying what the folder is."""
    if not (folder / _MANIFEST).is_file():
        raise StoreError(f"reinforcements={str(folder)!r}: the folder has no {_MANIFEST}; point to the folder "
                         "written by the builder (an unfinished build has no manifest: rerun it to completion)")
    return folder / _MANIFEST


def open_reinforcements(reinforcements, num_augmentations: int | None = None, *, files: str = "records",
                        **hub_kwargs):
    """An opened :class:`~imagenet_plus.store.ReinforcementStore` from a spec (see :func:`resolve_store`) or a store.

    An opened store is returned as is (reopened if it was opened with another ``num_augmentations``).
    With ``files="identity"`` the store is opened without its shards (``check_files=False``): keys,
    labels and identities only. ``hub_kwargs``: ``revision``, ``cache_dir``, ``local_files_only``, ``token``.
    """
    from .store import ReinforcementStore, open_store

    if isinstance(reinforcements, ReinforcementStore):
        if num_augmentations is None or num_augmentations == reinforcements.num_augmentations:
            return reinforcements
        return open_store(reinforcements.root, num_augmentations=num_augmentations)
    path = resolve_store(reinforcements, num_augmentations, files=files, **hub_kwargs)
    if files == "identity":
        return open_store(path, check_files=False)
    return open_store(path, num_augmentations=num_augmentations)


def _no_connection(err: Exception, repo_id: str, revision: str | None, cache_dir) -> StoreError:
    from huggingface_hub import constants

    cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    return StoreError(f"the Hugging Face Hub ({constants.ENDPOINT}) could not be reached for dataset repo "
                      f"'{repo_id}' at revision '{revision or 'main'}' ({err.__class__.__name__}: {err}) and its "
                      f"{_MANIFEST} is not in the Hugging Face cache ({cache}); check your connection and retry, "
                      "or pass a local folder")


def resolve_manifest(spec, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                     local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """The ``manifest.json`` of a store spec, downloading only that file from the Hub.

    Takes the same arguments as :func:`resolve_reinforcements` (less ``num_augmentations``).

    Returns:
        The path of ``manifest.json`` (in the local folder or the Hugging Face cache).

    Raises:
        StoreError: as :func:`resolve_reinforcements`.
    """
    return resolve_store(spec, files="manifest", revision=revision, cache_dir=cache_dir,
                         local_files_only=local_files_only, token=token) / _MANIFEST


def resolve_identity(spec, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                     local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """A folder holding a store's ``manifest.json`` and ``samples.safetensors`` (no shards downloaded).

    Enough to check samples' identities (keys, labels, sizes, fingerprints) without the records:
    open it with ``open_store(path, check_files=False)``. Arguments as :func:`resolve_reinforcements`.
    """
    return resolve_store(spec, files="identity", revision=revision, cache_dir=cache_dir,
                         local_files_only=local_files_only, token=token)


def resolve_reinforcements(spec, num_augmentations: int | None = None, *, revision: str | None = None,
                           cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                           token: str | bool | None = None) -> Path:
    """Resolve a store spec to a local folder holding the files needed for ``num_augmentations``.

    Arguments as :func:`resolve_store` (which this is, with ``files="records"``).

    Returns:
        The store folder (for a repo, its snapshot folder in the cache). It may hold a subset of the
        shards; open it with ``open_store(path, num_augmentations=...)``.

    Raises:
        StoreError: the spec is malformed, the folder or repo is not a store, the revision or a file is
            missing (online or in the offline cache); the message names the repo, revision or file and what to do.

    Example:
        >>> path = resolve_reinforcements("imagenet-plus/imagenet-plus@v1", num_augmentations=50)
        >>> store = open_store(path, num_augmentations=50)
    """
    return resolve_store(spec, num_augmentations, revision=revision, cache_dir=cache_dir,
                         local_files_only=local_files_only, token=token)


def _with_path_note(err: StoreError, spec) -> StoreError:
    """Say that no local folder of that name exists either, when a Hub failure may hide a mistyped path."""
    if err.__cause__ is None or not isinstance(spec, str) or "@" in spec or registry.default_repo(spec):
        return err
    return type(err)(f"{err} (there is no local folder {spec!r} either, relative to {os.getcwd()})")
