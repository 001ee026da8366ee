"""Publishing: the folder is verified before anything is sent, then create_repo / upload_folder / create_tag.

The Hub is faked at the ``HfApi`` boundary with an autospec of the real class (so every call
must match huggingface_hub's own signatures); ``upload_folder`` lists the files it would send
with huggingface_hub's own pattern filter over the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import httpx2
import pytest
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import GitRefInfo, GitRefs
from huggingface_hub.utils import filter_repo_objects

from builders.export import ExportConfig, main as export_main
from builders.push import check_publish_folder, cli, default_tag, push_to_hub
from fakes.store_fakes import write_fake_store
from imagenet_plus.errors import IntegrityError, ReinforcementError, StoreError

REPO = "imagenet-plus/imagenet-plus"
COMMIT = "a" * 40


@pytest.fixture
def folder(tmp_path):
    fake = write_fake_store(tmp_path / "imagenet-plus", num_samples=7, num_augmentations=5, num_classes=1000,
                            topk=4, samples_per_shard=3, augs_per_shard=2, dataset="imagenet")
    export_main(ExportConfig(store=str(fake.root), repo_id=REPO, rows_per_group=2, rows_per_file=4, progress=False))
    return fake.root


def _expected_files(folder: Path) -> list[str]:
    m = json.loads((folder / "manifest.json").read_text())
    return sorted(["manifest.json", "README.md", m["samples_file"]["file"], *(s["file"] for s in m["shards"]),
                   "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"])


def _fake_api(existing_tags: dict[str, str] | None = None):
    api = mock.create_autospec(HfApi, instance=True)
    tags = dict(existing_tags or {})
    sent: list[list[str]] = []

    def upload_folder(*, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        everything = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        sent.append(list(filter_repo_objects(everything, allow_patterns=allow_patterns,
                                             ignore_patterns=ignore_patterns)))
        return CommitInfo(commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/{COMMIT}",
                          commit_message=kwargs.get("commit_message") or "", commit_description="", oid=COMMIT)

    def create_tag(repo_id, *, tag, revision=None, **kwargs):
        if tag in tags:
            response = httpx2.Response(409, request=httpx2.Request("POST", f"https://huggingface.co/api/x/{tag}"))
            raise HfHubHTTPError("409 Conflict: tag exists", response=response)
        tags[tag] = revision

    def list_repo_refs(repo_id, **kwargs):
        return GitRefs(branches=[], converts=[],
                       tags=[GitRefInfo(name=t, ref=f"refs/tags/{t}", target_commit=c) for t, c in tags.items()])

    api.create_repo.return_value = f"https://huggingface.co/datasets/{REPO}"
    api.upload_folder.side_effect = upload_folder
    api.create_tag.side_effect = create_tag
    api.list_repo_refs.side_effect = list_repo_refs
    return api, sent, tags


def test_push_calls_and_files(folder):
    api, sent, tags = _fake_api()
    result = push_to_hub(folder, REPO, revision_tag="v1", api=api)
    api.create_repo.assert_called_once_with(REPO, repo_type="dataset", exist_ok=True, private=None, token=None)
    (call,) = api.upload_folder.call_args_list
    assert call.kwargs["repo_id"] == REPO and call.kwargs["repo_type"] == "dataset"
    assert call.kwargs["folder_path"] == str(folder)
    assert "NS=5, K=4, seed=0" in call.kwargs["commit_message"]
    assert sent == [_expected_files(folder)]
    assert tags == {"v1": COMMIT}
    api.create_tag.assert_called_once()
    assert api.create_tag.call_args.kwargs["repo_type"] == "dataset"
    assert result.commit == COMMIT and result.tag == "v1" and result.files == _expected_files(folder)


def test_local_dir_metadata_is_neither_checked_nor_sent(folder):
    # `hf download --local-dir` leaves .cache/huggingface/ metadata; upload_folder never sends it
    meta = folder / ".cache" / "huggingface" / "download" / "manifest.json.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text("x")
    api, sent, _ = _fake_api()
    push_to_hub(folder, REPO, revision_tag="v1", api=api)
    assert sent == [_expected_files(folder)]


def test_rerun_tolerates_same_tag_and_rejects_moved_tag(folder):
    api, sent, tags = _fake_api({"v1": COMMIT})
    assert push_to_hub(folder, REPO, revision_tag="v1", api=api).tag == "v1"  # tag already on this commit
    api.list_repo_refs.assert_called_once()
    api, sent, tags = _fake_api({"v1": "b" * 40})
    with pytest.raises(ReinforcementError, match=f"tag 'v1' .* already points at commit {'b' * 40}.*--revision-tag"):
        push_to_hub(folder, REPO, revision_tag="v1", api=api)


def test_default_tag(folder):
    api, _, tags = _fake_api()
    result = push_to_hub(folder, REPO, api=api)
    assert result.tag == "imagenet-ns5-k4-seed0-vtests" and tags == {result.tag: COMMIT}
    files, manifest = check_publish_folder(folder)
    assert default_tag(manifest) == result.tag
    manifest.builder_version = "0.1.0+local/x"
    assert default_tag(manifest) == "imagenet-ns5-k4-seed0-v0.1.0-local-x"


@pytest.mark.parametrize("damage, error, match", [
    ("corrupt_shard", IntegrityError, "sha256"),
    ("extra_file", StoreError, r"not part of the build \(notes.txt"),
    ("tmp_file", StoreError, "interrupted write"),
    ("no_card", StoreError, "README.md: missing"),
    ("no_parquet", StoreError, "no Parquet files"),
    ("missing_parquet", StoreError, "not one complete numbered set"),
    ("card_data_files", StoreError, "do not match the Parquet files"),
    ("missing_shard", IntegrityError, "missing"),
])
def test_nothing_is_sent_from_a_bad_folder(folder, damage, error, match):
    m = json.loads((folder / "manifest.json").read_text())
    shard = folder / m["shards"][3]["file"]
    if damage == "corrupt_shard":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.write_bytes(bytes(data))
    elif damage == "extra_file":
        (folder / "notes.txt").write_text("x")
    elif damage == "tmp_file":
        (folder / "reinforcements" / ".shard-x.safetensors.tmp").write_bytes(b"")
    elif damage == "no_card":
        (folder / "README.md").unlink()
    elif damage == "no_parquet":
        shutil.rmtree(folder / "data")
    elif damage == "missing_parquet":
        (folder / "data" / "train-00001-of-00002.parquet").unlink()
    elif damage == "card_data_files":
        card = folder / "README.md"
        card.write_text(card.read_text().replace("data/train-*.parquet", "data/validation-*.parquet"))
    elif damage == "missing_shard":
        shard.unlink()
    api, sent, _ = _fake_api()
    with pytest.raises(error, match=match):
        push_to_hub(folder, REPO, api=api)
    assert api.create_repo.call_count == 0 and api.upload_folder.call_count == 0 and sent == []


def test_imagenet_images_are_refused(folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "data" / "train-00000-of-00002.parquet"
    table = pq.read_table(path)
    image = pa.StructArray.from_arrays([pa.array([b"x"] * len(table), pa.binary()),
                                        pa.array([None] * len(table), pa.string())], names=["bytes", "path"])
    meta = json.loads(table.schema.metadata[b"huggingface"])
    meta["info"]["features"]["image"] = {"_type": "Image"}
    table = table.append_column("image", image).replace_schema_metadata({"huggingface": json.dumps(meta)})
    pq.write_table(table, path)
    with pytest.raises(ReinforcementError, match="licence forbids"):
        check_publish_folder(folder)


def test_bad_repo_and_tag(folder):
    api, _, _ = _fake_api()
    with pytest.raises(ReinforcementError, match="plain 'org/name'"):
        push_to_hub(folder, f"{REPO}@v1", api=api)
    with pytest.raises(ReinforcementError, match="revision-tag"):
        push_to_hub(folder, REPO, revision_tag="v 1", api=api)
    assert api.upload_folder.call_count == 0


def test_cli(folder, capsys):
    api, sent, _ = _fake_api()
    with mock.patch("huggingface_hub.HfApi", return_value=api) as cls:
        assert cli([str(folder), "--repo-id", REPO, "--revision-tag", "v2", "--token", "hf_x"]) == 0
    cls.assert_called_once_with(token="hf_x")
    out = json.loads(capsys.readouterr().out)
    assert out == {"repo_id": REPO, "commit": COMMIT, "tag": "v2", "files": len(_expected_files(folder))}
    (folder / "stray.bin").write_bytes(b"0")
    assert cli([str(folder), "--repo-id", REPO]) == 2
    assert "stray.bin" in capsys.readouterr().err
