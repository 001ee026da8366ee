"""Resolving stores: local folders, repo specs, and the Hub cache read offline through the real huggingface_hub code."""

from __future__ import annotations

import shutil
from unittest import mock

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import constants as hub_constants

from fakes.hub_cache import populate_hub_cache, repo_files
from fakes.store_fakes import write_fake_store
from imagenet_plus import hub
from imagenet_plus.errors import StoreError
from imagenet_plus.hub import parse_repo_spec, required_files, resolve_manifest, resolve_reinforcements
from imagenet_plus.store import open_store

REPO = "imagenet-plus/cifar100-plus"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    # 9 samples x 7 augmentations in shards of 4 samples x 3 augmentations: blocks [0,3) [3,6) [6,7)
    return write_fake_store(tmp_path_factory.mktemp("store") / "store", num_samples=9, num_augmentations=7,
                            num_classes=12, topk=3, samples_per_shard=4, augs_per_shard=3)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def _first_block(fake) -> list[str]:
    return ["manifest.json", fake.manifest.samples_file.file] + \
        [s.file for s in fake.manifest.shards if s.augs == (0, 3)]


def _assert_same_records(path, fake, num_augmentations):
    store = open_store(path, num_augmentations=num_augmentations)
    assert store.num_augmentations == num_augmentations
    assert store.keys == fake.keys
    for i in range(fake.manifest.num_samples):
        for j in range(num_augmentations):
            for name, values in fake.params.items():
                np.testing.assert_array_equal(store.params(i, j)[name], values[i, j])
            np.testing.assert_array_equal(store.targets(i, j)[0], fake.topk_ids[i, j])


# -- specs ------------------------------------------------------------------------------------------
def test_parse_repo_spec():
    assert parse_repo_spec("org/name") == ("org/name", None)
    assert parse_repo_spec("org/name@v1") == ("org/name", "v1")
    assert parse_repo_spec("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    assert parse_repo_spec("cifar100") == ("imagenet-plus/cifar100-plus", None)
    assert parse_repo_spec("imagenet@v2") == ("imagenet-plus/imagenet-plus", "v2")
    for bad in ("not a repo", "org/", "org/name@", "a/b/c", "svhn"):
        with pytest.raises(StoreError, match="repo id|revision"):
            parse_repo_spec(bad)


def test_required_files_select_augmentation_blocks(fake):
    m = fake.manifest
    assert required_files(m, 3) == _first_block(fake)
    # 3 sample blocks x augmentation blocks [0, 3) and [3, 6)
    assert required_files(m, 4)[2:] == [s.file for s in m.shards if s.augs[0] < 4]
    assert len(required_files(m, 4)) == 2 + 3 * 2
    assert len(required_files(m, None)) == 2 + len(m.shards)
    for bad in (0, 8, 2.5, True):
        with pytest.raises(StoreError, match=r"num_augmentations=.*\[1, 7\]"):
            required_files(m, bad)


# -- local folders ----------------------------------------------------------------------------------
def test_local_folder_is_returned(fake, tmp_path):
    assert resolve_reinforcements(str(fake.root)) == fake.root.resolve()
    assert resolve_reinforcements(fake.root, num_augmentations=4) == fake.root.resolve()
    assert resolve_manifest(fake.root) == fake.root.resolve() / "manifest.json"
    with pytest.raises(StoreError, match="folder not found"):
        resolve_reinforcements(str(tmp_path / "nope"))
    with pytest.raises(StoreError, match="no manifest.json"):
        resolve_reinforcements(tmp_path)
    with pytest.raises(StoreError, match="revision='v1' applies to Hub repos"):
        resolve_reinforcements(fake.root, revision="v1")


def test_partial_local_folder(fake, tmp_path):
    partial = tmp_path / "partial"
    for f in _first_block(fake):
        (partial / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fake.root / f, partial / f)
    assert resolve_reinforcements(partial, num_augmentations=3) == partial.resolve()
    _assert_same_records(partial, fake, 3)
    with pytest.raises(StoreError, match=r"missing \(reinforcements/shard-s00000000-s00000004-a00003-a00006.*"
                                         r"num_augmentations <= 3"):
        resolve_reinforcements(partial, num_augmentations=4)


# -- the Hub cache, offline ---------------------------------------------------------------------------
def test_offline_full_snapshot(fake, tmp_path):
    cache = tmp_path / "hub"
    snap = populate_hub_cache(cache, REPO, fake.root)
    path = resolve_reinforcements(REPO, cache_dir=cache)
    assert path == snap
    _assert_same_records(path, fake, 7)
    # a dataset name resolves to its default repo, the same snapshot
    assert resolve_reinforcements("cifar100", cache_dir=cache) == snap


def test_offline_partial_fetches_only_first_block(fake, tmp_path):
    cache = tmp_path / "hub"
    # what a real partial download leaves: the full tree listing, the first block's files only
    snap = populate_hub_cache(cache, REPO, fake.root, files=_first_block(fake))
    real = huggingface_hub.snapshot_download
    with mock.patch.object(huggingface_hub, "snapshot_download", wraps=real) as spy:
        path = resolve_reinforcements(REPO, num_augmentations=3, cache_dir=cache)
    assert path == snap
    (args, kwargs), = spy.call_args_list
    assert args == (REPO,) and kwargs["repo_type"] == "dataset"
    assert kwargs["allow_patterns"] == _first_block(fake)
    assert kwargs["revision"] == snap.name  # pinned to the manifest's commit
    assert sorted(repo_files(path)) == sorted(_first_block(fake))
    _assert_same_records(path, fake, 3)
    # asking for more than the cache holds names the missing shard and the way out
    with pytest.raises(StoreError) as err:
        resolve_reinforcements(REPO, num_augmentations=5, cache_dir=cache)
    msg = str(err.value)
    assert REPO in msg and "a00003-a00006" in msg and "HF_HUB_OFFLINE=0" in msg and "num_augmentations <= 3" in msg


def test_offline_partial_without_tree_listing(fake, tmp_path):
    # older caches have no trees/<commit>.json: snapshot_download returns the folder, we check the files
    cache = tmp_path / "hub"
    populate_hub_cache(cache, REPO, fake.root, files=_first_block(fake), write_tree=False)
    assert resolve_reinforcements(REPO, num_augmentations=2, cache_dir=cache).is_dir()
    with pytest.raises(StoreError, match=r"missing from the cached snapshot.*a00006-a00007"):
        resolve_reinforcements(REPO, cache_dir=cache)


def test_offline_revisions(fake, tmp_path):
    cache = tmp_path / "hub"
    snap = populate_hub_cache(cache, REPO, fake.root, refs=("main", "v1"))
    commit = snap.name
    assert resolve_reinforcements(f"{REPO}@v1", cache_dir=cache) == snap
    assert resolve_reinforcements(REPO, revision="v1", cache_dir=cache) == snap
    assert resolve_reinforcements(f"{REPO}@{commit}", cache_dir=cache) == snap
    with pytest.raises(StoreError) as err:
        resolve_reinforcements(f"{REPO}@v2", cache_dir=cache)
    msg = str(err.value)
    assert f"'{REPO}'" in msg and "'v2'" in msg and "manifest.json" in msg and "HF_HUB_OFFLINE=0" in msg
    with pytest.raises(StoreError, match="revision 'v2' but revision='v1'"):
        resolve_reinforcements(f"{REPO}@v2", revision="v1", cache_dir=cache)


def test_offline_missing_repo_and_manifest(fake, tmp_path):
    cache = tmp_path / "hub"
    with pytest.raises(StoreError, match=r"imagenet-plus/food101-plus.*not in the Hugging Face cache.*local folder"):
        resolve_reinforcements("food101", cache_dir=cache)
    # a cached snapshot that lacks manifest.json (e.g. only the Parquet was downloaded)
    populate_hub_cache(cache, REPO, fake.root, files=[fake.manifest.samples_file.file])
    with pytest.raises(StoreError, match="manifest.json of dataset repo"):
        resolve_reinforcements(REPO, cache_dir=cache)


def test_local_files_only_without_offline_env(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    cache = tmp_path / "hub"
    snap = populate_hub_cache(cache, REPO, fake.root, files=_first_block(fake))
    assert resolve_reinforcements(REPO, num_augmentations=3, cache_dir=cache, local_files_only=True) == snap
    with pytest.raises(StoreError, match="local_files_only=True"):
        resolve_reinforcements(REPO, num_augmentations=4, cache_dir=cache, local_files_only=True)
    with pytest.raises(StoreError, match="local_files_only=False"):
        resolve_reinforcements("org/absent", cache_dir=cache, local_files_only=True)


def test_hub_error_messages():
    import httpx2
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/datasets/o/n"))
    cases = [
        (RevisionNotFoundError("404", response=response), "revision 'v9' does not exist"),
        (RepositoryNotFoundError("404", response=response), "was not found on the Hub"),
        (GatedRepoError("403", response=response), "is gated"),
    ]
    for err, expected in cases:
        with mock.patch.object(huggingface_hub, "hf_hub_download", side_effect=err):
            with pytest.raises(StoreError, match=expected) as info:
                resolve_reinforcements("o/n@v9", local_files_only=False)
        assert "'o/n'" in str(info.value) and info.value.__cause__ is err
    assert hub.DEFAULT_ORG == "imagenet-plus"


# -- the Hub over HTTP (an in-process fake of its API) ---------------------------------------------------
def test_online_partial_download_fetches_only_first_block(fake, tmp_path):
    from fakes.hub_server import FakeHub

    server = FakeHub()
    server.add_repo(REPO, fake.root, tags=("v1",))
    cache = tmp_path / "hub"
    with server.installed():
        path = resolve_reinforcements(f"{REPO}@v1", num_augmentations=3, cache_dir=cache)
    assert server.downloaded(REPO) == sorted(_first_block(fake))
    _assert_same_records(path, fake, 3)
    # offline afterwards: the cache the download left serves the same request, and only that
    assert resolve_reinforcements(f"{REPO}@v1", num_augmentations=3, cache_dir=cache) == path
    with pytest.raises(StoreError, match="HF_HUB_OFFLINE=0.*num_augmentations <= 3"):
        resolve_reinforcements(f"{REPO}@v1", num_augmentations=4, cache_dir=cache)
    # online again: only the missing shards are fetched
    server.log.clear()
    with server.installed():
        assert resolve_reinforcements(REPO, cache_dir=cache) == path
    assert server.downloaded(REPO) == sorted(set(repo_files(fake.root)) - set(_first_block(fake)))
    _assert_same_records(path, fake, 7)


def test_online_errors(fake, tmp_path):
    from fakes.hub_server import FakeHub

    server = FakeHub()
    server.add_repo(REPO, fake.root)
    server.add_repo("org/no-store", fake.root, files={"README.md": b"# not a store\n"})
    cache = tmp_path / "hub"
    with server.installed():
        with pytest.raises(StoreError, match=f"'{REPO}' at revision 'v9': revision 'v9' does not exist"):
            resolve_reinforcements(f"{REPO}@v9", cache_dir=cache)
        with pytest.raises(StoreError, match="'org/absent' .* was not found on the Hub.*check the repo id.*"
                                             "no local folder 'org/absent' either"):
            resolve_reinforcements("org/absent", cache_dir=cache)
        with pytest.raises(StoreError, match="'org/no-store' .* has no manifest.json; it is not a reinforcement store"):
            resolve_reinforcements("org/no-store", cache_dir=cache)
        with pytest.raises(StoreError, match=r"num_augmentations=8: .*\[1, 7\]"):
            resolve_reinforcements(REPO, num_augmentations=8, cache_dir=cache)


def test_an_unreachable_hub_fails_at_once_without_retries(fake, tmp_path, monkeypatch):
    """A Hub that gives no answer used to be retried for about 23 s; now one attempt, then the clear error."""
    import httpx2
    from huggingface_hub.utils import _http

    from fakes.hub_server import FakeHub

    class Unreachable(FakeHub):
        def handler(self, request):
            self.log.append((request.method, request.url.path))
            raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    waits = []
    monkeypatch.setattr(_http.time, "sleep", waits.append)  # the backoff's sleeps are counted, not waited
    server = Unreachable()
    with server.installed():
        with pytest.raises(StoreError, match=r"could not be reached for dataset repo 'org/name' at revision 'main' "
                                             r"\(ConnectError: .*name resolution\).*not in the Hugging Face cache"):
            resolve_reinforcements("org/name", cache_dir=tmp_path / "hub")
    assert len(server.log) == 1 and waits == [], (server.log, waits)


def test_a_reachable_hub_is_asked_once_more_and_still_serves_the_store(fake, tmp_path):
    from fakes.hub_server import FakeHub

    server = FakeHub()
    server.add_repo(REPO, fake.root)
    with server.installed():
        path = resolve_reinforcements(REPO, num_augmentations=3, cache_dir=tmp_path / "hub")
    _assert_same_records(path, fake, 3)
    heads = [p for m, p in server.log if m == "HEAD" and p.endswith("/manifest.json")]
    assert len(heads) == 2, server.log  # the probe and hf_hub_download's own
