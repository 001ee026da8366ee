"""The build engine (``imagenet_plus.reinforce``): records, replay equality, determinism, resume, faults.

A tiny store over 18 real scikit-learn digits (upsampled to 24 px) and a seeded
two-layer convolutional teacher; every build takes well under a second.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.numpy import load_file

from builders.digits import Digits
from imagenet_plus.augment import create_policy
from imagenet_plus.errors import ReinforcementError, StoreError
from imagenet_plus.identity import load_sample, sample_keys
from imagenet_plus.imageio import to_rgb_array
from imagenet_plus.reinforce import BuildStats, build_reinforcements, resolve_dist_env
from imagenet_plus.schema import content_hash, encode_topk_ids, encode_topk_probs
from imagenet_plus.store import Manifest, open_store, plan_shards, read_shard_entry, shard_filename, verify

N, A, C, K, S = 18, 6, 10, 3, 24
SPS, APS = 8, 4  # 3 sample blocks x 2 augmentation blocks (the last of each shorter)


class _TinyNet(nn.Module):
    def __init__(self, num_classes: int = C, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))) * 4.0


class Teacher:
    """uint8 pixels -> softmax probabilities; counts its calls and batch sizes."""

    def __init__(self, num_classes: int = C, logits: bool = False):
        self.net = _TinyNet(num_classes).eval()
        self.logits = logits
        self.batches: list[int] = []

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        self.batches.append(u8.shape[0])
        with torch.no_grad():
            out = self.net(u8.float() / 255.0)
        return out if self.logits else out.softmax(-1)


@pytest.fixture(scope="module")
def base():
    full = Digits(split="test", image_size=S)
    return torch.utils.data.Subset(full, range(N))


@pytest.fixture(scope="module")
def policy():
    return create_policy("cifar", output_size=S, geometry={"kind": "pad_crop", "padding": 4})


def _build(base, out, policy, teacher=None, **kw):
    args = dict(policy=policy, teacher=teacher or Teacher(), num_classes=C, num_augmentations=A, topk=K, seed=3,
                dataset_name="digits", teacher_desc={"model": "tiny"}, samples_per_shard=SPS, augs_per_shard=APS,
                batch_size=5, progress=False, split="test")
    args.update(kw)
    return build_reinforcements(base, out, **args)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(base, policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    teacher = Teacher()
    stats = BuildStats()
    m = _build(base, out, policy, teacher, stats=stats)
    return {"out": out, "manifest": m, "digests": _digests(out), "teacher": teacher, "stats": stats}


def test_store_layout_manifest_and_identity(reference, base, policy):
    out, m = reference["out"], reference["manifest"]
    assert isinstance(m, Manifest) and m == Manifest.load(out)
    plan = plan_shards(N, A, SPS, APS)
    assert [s.file for s in m.shards] == [shard_filename(*r) for r in plan]
    assert sorted(reference["digests"]) == sorted(["manifest.json", "samples.safetensors"] + [s.file for s in m.shards])
    assert (m.dataset, m.split, m.num_samples, m.num_augmentations, m.topk, m.num_classes, m.seed) == \
        ("digits", "test", N, A, K, C, 3)
    assert m.policy == policy.config and m.teacher == {"model": "tiny"}
    assert (m.samples_per_shard, m.augs_per_shard) == (SPS, APS)
    verify(out, full=True)
    store = open_store(out)
    assert store.keys == sample_keys(base) == [f"test/{i}" for i in range(N)]
    for i in range(N):
        img, label = load_sample(base, i)
        assert store.labels[i] == label
        assert np.array_equal(store.content_hashes[i], content_hash(to_rgb_array(img)))
    st = reference["stats"]
    assert (st.shards_built, st.shards_kept, st.samples, st.records) == (len(plan), 0, N, N * A)
    assert st.bytes_written == sum((out / f).stat().st_size for f in reference["digests"])
    assert "samples/s" in st.summary() and "augmentations/s" in st.summary()


def test_params_are_the_policys_counter_based_draws(reference, base, policy):
    store = open_store(reference["out"])
    for i in (0, 7, 17):
        img, _ = load_sample(base, i)
        want = policy.sample(3, np.full(A, i), np.arange(A), img.height, img.width, N)
        for j in range(A):
            got = store.params(i, j)
            for name, v in want.items():
                assert np.array_equal(got[name], v[j]), (i, j, name)


def test_targets_equal_the_teacher_on_the_replayed_pixels(reference, base, policy):
    """Replay equals build: CPU replay pixels -> same teacher -> the stored bytes, for every record."""
    out, teacher = reference["out"], reference["teacher"]
    m = reference["manifest"]
    for entry in m.shards:
        (s0, s1), (a0, a1) = entry.samples, entry.augs
        raw = load_file(str(out / entry.file))
        store = open_store(out)
        for i in range(s0, s1):
            img, _ = load_sample(base, i)
            x = torch.stack([policy.apply(img, store.params(i, j)) for j in range(a0, a1)])
            probs = Teacher()(x)  # same seeded weights as the build's teacher
            vals, ids = torch.topk(probs, K, dim=1)
            assert np.array_equal(raw["topk_ids"][i - s0], encode_topk_ids(ids.numpy(), C))
            assert np.array_equal(raw["topk_probs"][i - s0], encode_topk_probs(vals.double().numpy()))
    # batches never cross a shard; a shard's last partial batch is padded to a power of two
    want = []
    for s0, s1, a0, a1 in plan_shards(N, A, SPS, APS):
        n, rest = divmod((s1 - s0) * (a1 - a0), 5)
        want += [5] * n + ([min(5, 1 << (rest - 1).bit_length())] if rest else [])
    assert sorted(teacher.batches) == sorted(want)


def test_rebuild_is_byte_identical_whatever_the_worker_count(reference, base, policy, tmp_path):
    _build(base, tmp_path / "w2", policy, num_workers=2)
    assert _digests(tmp_path / "w2") == reference["digests"]


def test_batched_pixel_path_equals_apply_on_the_cpu(reference, base, policy, tmp_path):
    """The CUDA path's shape (crop in workers, batched ``finish`` per teacher batch) gives the same bytes on the CPU."""
    _build(base, tmp_path / "batched", policy, pixel_path="batched")
    assert _digests(tmp_path / "batched") == reference["digests"]
    with pytest.raises(ReinforcementError, match="pixel_path must be"):
        _build(base, tmp_path / "x", policy, pixel_path="gpu")


def test_resume_keeps_good_shards_rebuilds_broken_ones_and_removes_temp_files(reference, base, policy, tmp_path):
    out = tmp_path / "store"
    _build(base, out, policy)
    m = reference["manifest"]
    (out / "manifest.json").unlink()
    (out / "samples.safetensors").unlink()
    (out / m.shards[1].file).unlink()  # a shard never written
    bad = out / m.shards[3].file
    bad.write_bytes(bad.read_bytes()[:-7])  # a truncated shard
    stale = out / "reinforcements" / f".{Path(m.shards[2].file).name}.abc123.tmp"
    stale.write_bytes(b"half a shard")  # the temp file of a killed writer
    kept = out / m.shards[0].file
    before = kept.stat().st_mtime_ns
    stats = BuildStats()
    _build(base, out, policy, stats=stats)
    assert (stats.shards_built, stats.shards_kept) == (2, len(m.shards) - 2)
    assert kept.stat().st_mtime_ns == before
    assert not stale.exists() and not (out / ".build").exists()
    assert _digests(out) == reference["digests"]
    # a finished store rebuilt with the same settings is left as it is
    _build(base, out, policy)
    assert _digests(out) == reference["digests"]


def test_resume_with_other_settings_is_refused(reference, base, policy, tmp_path):
    out = tmp_path / "store"
    _build(base, out, policy)
    with pytest.raises(StoreError, match=r"finished store with other settings \(seed differ\)"):
        _build(base, out, policy, seed=4)
    (out / "manifest.json").unlink()
    (out / ".build").mkdir()
    (out / ".build" / "settings.json").write_text('{"seed": 99}')
    with pytest.raises(StoreError, match=r"unfinished build with other settings .*rerun with the original settings"):
        _build(base, out, policy)


def test_full_disk_leaves_no_partial_shard_and_resumes(reference, base, policy, tmp_path, monkeypatch):
    out = tmp_path / "store"
    real_fdopen = os.fdopen
    calls = {"n": 0}

    class _Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fdopen(fd, *a, **kw):
        f = real_fdopen(fd, *a, **kw)
        calls["n"] += 1
        return _Full(f) if calls["n"] == 3 else f  # the third shard hits a full disk

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError, match=r"writing shard .*shard-s00000008-s00000016-a00000-a00004.*the disk is full"
                                      r".*rerun the same command") as ei:
        _build(base, out, policy)
    assert ei.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    files = sorted(p.name for p in (out / "reinforcements").iterdir())
    assert files == [Path(shard_filename(*r)).name for r in plan_shards(N, A, SPS, APS)[:2]]
    for name in files:
        read_shard_entry(out, name, reference["manifest"].fields)
    assert not (out / "manifest.json").exists()
    _build(base, out, policy)
    assert _digests(out) == reference["digests"]


def test_mixing_partners_are_replayed_from_their_own_records(base, tmp_path):
    pol = create_policy("rrc+mix", output_size=S)
    teacher = Teacher()
    _build(base, tmp_path / "mix", pol, teacher, num_augmentations=4, augs_per_shard=4)
    _build(base, tmp_path / "mix-batched", pol, Teacher(), num_augmentations=4, augs_per_shard=4,
           pixel_path="batched")
    assert _digests(tmp_path / "mix-batched") == _digests(tmp_path / "mix")
    store = open_store(tmp_path / "mix")
    mixed = 0
    for i in range(N):
        img, _ = load_sample(base, i)
        for j in range(4):
            prm = store.params(i, j)
            if int(prm["mix_kind"]) == 0:
                continue
            mixed += 1
            p = int(prm["mix_partner"])
            x = pol.apply(img, prm, load_sample(base, p)[0], store.params(p, j))
            vals, ids = torch.topk(Teacher()(x[None]), K, dim=1)
            got_ids, got_probs = store.targets(i, j)
            assert np.array_equal(got_ids, ids[0].numpy())
    assert mixed > N  # the default mix prob is 1: nearly every record mixes


def test_teacher_output_is_checked(base, policy, tmp_path):
    with pytest.raises(ReinforcementError, match="not a probability distribution.*not logits"):
        _build(base, tmp_path / "a", policy, Teacher(logits=True))
    with pytest.raises(ReinforcementError, match=r"teacher returned \[5, 7\].*num_classes=10"):
        _build(base, tmp_path / "b", policy, Teacher(num_classes=7))
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_argument_errors(base, policy, tmp_path, monkeypatch):
    with pytest.raises(ReinforcementError, match="topk=11 exceeds num_classes=10"):
        _build(base, tmp_path / "x", policy, topk=11)
    with pytest.raises(ReinforcementError, match="batch_size must be a positive integer"):
        _build(base, tmp_path / "x", policy, batch_size=0)
    with pytest.raises(ReinforcementError, match=r"rank=2 must lie in \[0, world_size=2\)"):
        _build(base, tmp_path / "x", policy, rank=2, world_size=2)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ReinforcementError, match=r"world_size=2 but \['MASTER_ADDR'.*launch with torchrun"):
        _build(base, tmp_path / "x", policy, rank=1, world_size=2)


def test_resolve_dist_env():
    assert resolve_dist_env({}) == (0, 1, 0)
    assert resolve_dist_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    assert resolve_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == (5, 8, 1)
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}
    assert resolve_dist_env(env) == (0, 2, 0)  # torchrun inside an allocation wins
    with pytest.raises(ReinforcementError, match="inconsistent"):
        resolve_dist_env({"RANK": "3", "WORLD_SIZE": "2"})
    with pytest.raises(ReinforcementError, match="must be integers"):
        resolve_dist_env({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})



def test_a_shard_from_another_build_is_replaced_not_kept(reference, base, policy, tmp_path):
    """A same-named shard left by a build with another seed carries another build id: rebuilt, never kept."""
    other = tmp_path / "other"
    _build(base, other, policy, seed=4)
    out = tmp_path / "out"
    name = shard_filename(0, SPS, 0, APS)
    (out / name).parent.mkdir(parents=True)
    (out / name).write_bytes((other / name).read_bytes())
    stats = BuildStats()
    m = _build(base, out, policy, stats=stats)
    assert stats.shards_kept == 0
    assert m.build_id and m.build_id == reference["manifest"].build_id
    assert _digests(out) == reference["digests"]
    assert read_shard_entry(out, name, m.fields, build_id=m.build_id).sha256 == m.shards[0].sha256
    with pytest.raises(StoreError, match="another build"):
        read_shard_entry(other, name, m.fields, build_id=m.build_id)
