"""The build engine (``imagenet_plus.builder``): records, replay equality, determinism, resume, faults, read-back.

A tiny store over 18 real scikit-learn digits (upsampled to 24 px) and a seeded
two-layer convolutional teacher; every build takes about a second.
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

from imagenet_plus.adapters import Digits, adapt
from imagenet_plus.augment import create_policy
from imagenet_plus.builder import BuildStats, build_reinforcements, resolve_dist_env
from imagenet_plus.builder import outdir as outdir_module
from imagenet_plus.builder.plan import Shard
from imagenet_plus.builder.readback import Probe, check_store
from imagenet_plus.builder.teacher_run import ShardWork
from imagenet_plus.errors import ArgumentError, BuildError, IntegrityError, StoreError
from imagenet_plus.identity import fingerprint
from imagenet_plus.schema import encode_topk_ids, encode_topk_probs
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
    """uint8 pixels -> softmax probabilities; counts its calls and batch sizes (declares no class count)."""

    def __init__(self, num_classes: int = C, logits: bool = False, on_call=None):
        self.net = _TinyNet(num_classes).eval()
        self.logits = logits
        self.batches: list[int] = []
        self.on_call = on_call

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        self.batches.append(u8.shape[0])
        if self.on_call is not None:
            self.on_call(len(self.batches))
        with torch.no_grad():
            out = self.net(u8.float() / 255.0)
        return out if self.logits else out.softmax(-1)


@pytest.fixture(scope="module")
def base():
    return torch.utils.data.Subset(Digits(split="test", image_size=S), range(N))


@pytest.fixture(scope="module")
def policy():
    return create_policy("cifar", output_size=S, geometry={"kind": "pad_crop", "padding": 4})


def _build(base, out, policy, teacher=None, **kw):
    args = dict(policy=policy, teacher=teacher or Teacher(), num_augmentations=A, topk=K, seed=3,
                teacher_desc={"model": "tiny"}, samples_per_shard=SPS, augs_per_shard=APS, batch_size=5,
                progress=False)
    args.update(kw)
    return build_reinforcements(base, out, **args)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _interrupt_after(calls: int):
    """A teacher hook raising KeyboardInterrupt at its ``calls``-th batch (a Ctrl-C mid-build)."""
    def hook(n: int) -> None:
        if n == calls:
            raise KeyboardInterrupt
    return hook


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
    adapter = adapt(base)
    assert store.keys == adapter.keys() == [f"test/{i}" for i in range(N)]
    for i in range(N):
        sample = adapter.load(i)
        assert store.labels[i] == sample.label
        assert np.array_equal(store.content_hashes[i], sample.digest)
        assert tuple(store.image_sizes[i]) == (S, S)
        assert np.array_equal(store.fingerprints[i], fingerprint(sample.image))
    st = reference["stats"]
    assert (st.shards_built, st.shards_kept, st.samples, st.records) == (len(plan), 0, N, N * A)
    assert st.bytes_written == sum((out / f).stat().st_size for f in reference["digests"])
    assert "samples/s" in st.summary() and "augmentations/s" in st.summary()


def test_params_are_the_policys_counter_based_draws(reference, base, policy):
    store = open_store(reference["out"])
    for i in (0, 7, 17):
        img = adapt(base).load(i).image
        want = policy.sample(3, np.full(A, i), np.arange(A), img.height, img.width, N)
        for j in range(A):
            got = store.params(i, j)
            for name, v in want.items():
                assert np.array_equal(got[name], v[j]), (i, j, name)


def test_targets_equal_the_teacher_on_the_replayed_pixels(reference, base, policy):
    """Replay equals build: CPU replay pixels -> same teacher -> the stored bytes, for every record."""
    out, teacher, m = reference["out"], reference["teacher"], reference["manifest"]
    store = open_store(out)
    for entry in m.shards:
        (s0, s1), (a0, a1) = entry.samples, entry.augs
        raw = load_file(str(out / entry.file))
        for i in range(s0, s1):
            img = adapt(base).load(i).image
            x = torch.stack([policy.apply(img, store.params(i, j)) for j in range(a0, a1)])
            vals, ids = torch.topk(Teacher()(x), K, dim=1)  # same seeded weights as the build's teacher
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
    with pytest.raises(ArgumentError, match="Unknown value 'gpu' for argument pixel_path"):
        _build(base, tmp_path / "x", policy, pixel_path="gpu")


def test_interrupted_build_resumes_byte_identically(reference, base, policy, tmp_path):
    """Ctrl-C mid-build, then damage: a truncated shard, a lost state file, a killed writer's temp file."""
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        _build(base, out, policy, Teacher(on_call=_interrupt_after(14)))
    shards = sorted(p.name for p in (out / "reinforcements").iterdir())
    assert 2 <= len(shards) < 6 and not (out / "manifest.json").exists()
    assert (out / ".build" / "settings.json").is_file()
    bad = out / "reinforcements" / shards[1]
    bad.write_bytes(bad.read_bytes()[:-7])  # a truncated shard
    (out / ".build" / f"state-{shards[0]}").unlink()  # killed between the shard and its state file
    stale = out / "reinforcements" / f".{shards[-1]}.abc12345.tmp"
    stale.write_bytes(b"half a shard")  # the temp file of a killed writer
    stats = BuildStats()
    _build(base, out, policy, stats=stats)
    assert stats.shards_kept == len(shards) - 2 and stats.shards_built == 6 - stats.shards_kept
    assert not stale.exists() and not (out / ".build").exists()
    assert _digests(out) == reference["digests"]
    stats = BuildStats()
    assert _build(base, out, policy, stats=stats) == reference["manifest"]  # finished: nothing to do
    assert stats.already_finished and stats.shards_built == 0 and _digests(out) == reference["digests"]


def test_a_build_killed_after_its_manifest_is_checked_and_cleaned_up(reference, base, policy, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "store"

    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(outdir_module.OutputFolder, "remove_state", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _build(base, out, policy)
    assert (out / "manifest.json").is_file() and (out / ".build" / "settings.json").is_file()
    stats = BuildStats()
    _build(base, out, policy, stats=stats)
    assert stats.already_finished and not (out / ".build").exists()
    assert _digests(out) == reference["digests"]


def test_other_settings_are_refused_and_nothing_is_touched(reference, base, policy, tmp_path):
    out = tmp_path / "store"
    _build(base, out, policy)
    before = _digests(out)
    with pytest.raises(BuildError, match=r"finished store with other settings \(seed differ\); choose another --out"):
        _build(base, out, policy, seed=4)
    assert _digests(out) == before
    other = tmp_path / "unfinished"
    with pytest.raises(KeyboardInterrupt):
        _build(base, other, policy, Teacher(on_call=_interrupt_after(14)))  # after its first shards
    before = _digests(other)
    with pytest.raises(BuildError, match=r"unfinished imagenet-plus build of other settings \(fields: .*; "
                                         r"topk: 3 -> 4\); rerun it with its original settings to resume it"):
        _build(base, other, policy, topk=4)
    assert _digests(other) == before


@pytest.mark.parametrize("entries, named", [
    ({".build/notes.txt": b"mine"}, ".build/notes.txt"),  # a user's .build folder
    ({"reinforcements/x.tmp": b"mine"}, "reinforcements/x.tmp"),  # a user's temp file
    ({"README.md": b"mine", "data/a.png": b"x"}, "README.md, data/"),  # a user's folder
    ({".build/settings.json": b'{"seed": 1}'}, "was not written by imagenet-plus build"),
])
def test_a_folder_the_builder_did_not_write_is_refused_and_left_as_it_is(base, policy, tmp_path, entries, named):
    out = tmp_path / "out"
    for rel, data in entries.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    before = _digests(out)
    teacher = Teacher()
    with pytest.raises(BuildError, match=r"--out .*out") as ei:
        _build(base, out, policy, teacher)
    assert named in str(ei.value) and teacher.batches == []
    assert _digests(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        {Path(rel).parts[0] for rel in entries})


def test_a_foreign_file_inside_an_unfinished_build_blocks_the_resume(base, policy, tmp_path):
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        _build(base, out, policy, Teacher(on_call=_interrupt_after(14)))
    (out / "reinforcements" / "x.tmp").write_bytes(b"mine")
    with pytest.raises(BuildError, match=r"holds files this build did not write \(reinforcements/x.tmp\)"):
        _build(base, out, policy)
    assert (out / "reinforcements" / "x.tmp").read_bytes() == b"mine"


def test_full_disk_leaves_no_partial_shard_and_resumes(reference, base, policy, tmp_path, monkeypatch):
    out = tmp_path / "store"
    target = Path(shard_filename(8, 16, 0, 4)).name
    real_fdopen = os.fdopen

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
        return _Full(f) if f"/.{target}." in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError, match=rf"writing shard .*{target} failed \(the disk is full\).*rerun the same "
                                      "command") as ei:
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
    _build(base, tmp_path / "mix", pol, num_augmentations=4, augs_per_shard=4, topk=5)
    _build(base, tmp_path / "mix-batched", pol, num_augmentations=4, augs_per_shard=4, topk=5, pixel_path="batched")
    assert _digests(tmp_path / "mix-batched") == _digests(tmp_path / "mix")
    store = open_store(tmp_path / "mix")
    adapter = adapt(base)
    mixed, hits1, hits5 = 0, 0, 0
    for i in range(N):
        img = adapter.load(i).image
        for j in range(4):
            prm = store.params(i, j)
            ids, _ = store.targets(i, j)
            labels = {adapter.label(i)}
            if int(prm["mix_kind"]) != 0:
                mixed += 1
                p = int(prm["mix_partner"])
                labels.add(adapter.label(p))
                x = pol.apply(img, prm, adapter.load(p).image, store.params(p, j))
                assert np.array_equal(ids, torch.topk(Teacher()(x[None]), 5, dim=1)[1][0].numpy())
            hits1 += int(ids[0]) in labels
            hits5 += bool(labels & set(ids[:5].tolist()))
    assert mixed > N  # the default mix prob is 1: nearly every record mixes
    report = store.manifest.reports["teacher"]
    assert (report["records"], report["mixed_records"], report["top1_hits"], report["top5_hits"]) == \
        (N * 4, mixed, hits1, hits5)  # a mixed record agrees with either image's label


def test_agreement_in_the_manifest_equals_a_hand_computation(reference, base):
    """Top-1/top-n agreement and the worst class, recomputed from the stored top-k ids and the samples' labels."""
    store = open_store(reference["out"])
    report = store.manifest.reports["teacher"]
    ids = np.stack([np.stack([store.targets(i, j)[0] for j in range(A)]) for i in range(N)])  # [N, A, K]
    labels = np.asarray(store.labels)[:, None]
    top1 = ids[..., 0] == labels
    top3 = (ids == labels[..., None]).any(-1)
    assert report["records"] == N * A and report["mixed_records"] == 0
    assert report["top1_hits"] == int(top1.sum()) and report["top1_agreement"] == round(top1.mean(), 6)
    assert report["top_n"] == 5 and report["top5_hits"] >= int(top3.sum())  # the teacher ranked 5, the store keeps 3
    per_class = {c: top1[store.labels == c].mean() for c in np.unique(store.labels)}
    worst = min(per_class, key=lambda c: (per_class[c], c))
    assert report["worst_class"]["class"] == worst and report["worst_class"]["name"] == str(worst)
    assert report["worst_class"]["records"] == int((store.labels == worst).sum()) * A
    assert report["chance_top1"] == 0.1 and report["input_pipeline"][0]["image_size"] == S


def test_top5_agreement_equals_a_hand_computation_from_the_stored_top5(base, policy, tmp_path):
    m = _build(base, tmp_path / "k5", policy, topk=5)
    store = open_store(tmp_path / "k5")
    ids = np.stack([np.stack([store.targets(i, j)[0] for j in range(A)]) for i in range(N)])
    labels = np.asarray(store.labels)[:, None, None]
    assert m.reports["teacher"]["top5_hits"] == int((ids == labels).any(-1).sum())
    assert m.reports["teacher"]["top1_hits"] == int((ids[..., :1] == labels).any(-1).sum())


def test_topk_defaults_to_min_10_num_classes(base, policy, tmp_path):
    assert _build(base, tmp_path / "a", policy, topk=None, num_augmentations=1).topk == 10
    with pytest.raises(BuildError, match=r"topk=11 exceeds num_classes=10.*--topk 10 or less"):
        _build(base, tmp_path / "b", policy, topk=11)
    assert not (tmp_path / "b").exists()


def test_teacher_output_is_checked(base, policy, tmp_path):
    with pytest.raises(BuildError, match="not a probability distribution.*not logits"):
        _build(base, tmp_path / "a", policy, Teacher(logits=True))
    with pytest.raises(BuildError, match=r"teacher returned \[5, 7\].*num_classes=10"):
        _build(base, tmp_path / "b", policy, Teacher(num_classes=7))
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_argument_errors(base, policy, tmp_path, monkeypatch):
    with pytest.raises(ArgumentError, match=r"Invalid value 0 for argument batch_size"):
        _build(base, tmp_path / "x", policy, batch_size=0)
    with pytest.raises(ArgumentError, match=r"Invalid value 2 for argument rank. Valid values are an integer in "
                                            r"\[0, 1\]"):
        _build(base, tmp_path / "x", policy, rank=2, world_size=2)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(BuildError, match=r"world_size=2 but \['MASTER_ADDR'.*launch with torchrun"):
        _build(base, tmp_path / "x", policy, rank=1, world_size=2)
    assert not (tmp_path / "x").exists()


def test_resolve_dist_env():
    assert resolve_dist_env({}) == (0, 1, 0)
    assert resolve_dist_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    assert resolve_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == (5, 8, 1)
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}
    assert resolve_dist_env(env) == (0, 2, 0)  # torchrun inside an allocation wins
    with pytest.raises(BuildError, match="inconsistent"):
        resolve_dist_env({"RANK": "3", "WORLD_SIZE": "2"})
    with pytest.raises(BuildError, match="must be integers"):
        resolve_dist_env({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})


def test_read_back_catches_a_params_field_stored_wrongly(base, policy, tmp_path, monkeypatch):
    """A bug that stores one field's rows shifted is caught at the first shard, before any manifest exists."""
    real = ShardWork.arrays

    def shifted(self):
        out = real(self)
        out["crop"] = np.roll(out["crop"], 1, axis=1)  # each record gets its neighbour's crop offsets
        return out

    monkeypatch.setattr(ShardWork, "arrays", shifted)
    with pytest.raises(BuildError, match=r"read-back check of reinforcements/shard-s00000000-s00000008-a00000-a00004"
                                         r".*read back from its shard and replayed differs from the pixels the "
                                         r"teacher saw.*a params field is stored or replayed wrongly"):
        _build(base, tmp_path / "bug", policy)
    assert not (tmp_path / "bug" / "manifest.json").exists()


def test_read_back_through_the_store_reader(reference, base, policy):
    store = open_store(reference["out"])
    shard = Shard(8, 16, 0, 4)
    pixels = policy.apply(adapt(base).load(9).image, store.params(9, 1)).numpy()
    check_store(reference["out"], adapt(base), policy, [Probe(shard, 9, 1, pixels, True)])
    off = pixels.copy()
    off[0, 0, 0] ^= 1  # one grey level on one pixel: the CPU path must be exact
    with pytest.raises(BuildError, match=r"record \(9, 1\) replayed from the finished store as training does "
                                         r"differs from the pixels the teacher saw"):
        check_store(reference["out"], adapt(base), policy, [Probe(shard, 9, 1, off, True)])
    check_store(reference["out"], adapt(base), policy, [Probe(shard, 9, 1, off, False)])  # within the CUDA bound


def test_a_shard_of_another_build_in_an_unfinished_build_is_rebuilt(reference, base, policy, tmp_path):
    other = tmp_path / "other"
    _build(base, other, policy, seed=4)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _build(base, out, policy, Teacher(on_call=_interrupt_after(2)))
    name = shard_filename(8, 16, 0, 4)
    (out / name).write_bytes((other / name).read_bytes())  # same name, another build id, no state file
    stats = BuildStats()
    m = _build(base, out, policy, stats=stats)
    assert m.build_id == reference["manifest"].build_id and _digests(out) == reference["digests"]
    with pytest.raises(StoreError, match="another build"):
        read_shard_entry(other, name, m.fields, build_id=m.build_id)


# -- the teacher is part of the store's identity ------------------------------------------------------------

def _write_checkpoint(path: Path, seed: int) -> str:
    """A random-init timm ``test_resnet`` for C classes saved as safetensors at ``path``; returns its sha256."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=C)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint_teacher(path: Path, interrupt_at: int | None = None):
    """A real :class:`imagenet_plus.teachers.Teacher` loaded from ``path``; optionally Ctrl-C at a batch."""
    from imagenet_plus.teachers import TeacherSpec, create_teacher

    teacher = create_teacher([TeacherSpec("test_resnet", str(path))], num_classes=C, pretrained=False, input_size=S)
    if interrupt_at is not None:
        forward, calls = teacher.forward, []

        def interrupted(x):
            calls.append(1)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            return forward(x)

        teacher.forward = interrupted
    return teacher


def test_resuming_with_another_checkpoint_under_the_same_name_is_refused(base, policy, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    sha_a = _write_checkpoint(ckpt, seed=0)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        _build(base, out, policy, _checkpoint_teacher(ckpt, interrupt_at=14), teacher_desc=None)
    assert len(list((out / "reinforcements").iterdir())) >= 2 and not (out / "manifest.json").exists()
    sha_b = _write_checkpoint(ckpt, seed=1)  # what examples/train.py does: the same name, other weights
    assert sha_a != sha_b
    before = _digests(out)
    with pytest.raises(BuildError, match=rf"{out} holds an unfinished build made with another teacher: checkpoint "
                                         rf"model.safetensors of test_resnet had sha256 {sha_a}, now {sha_b}; .*"
                                         r"restore the original checkpoint to resume it, or choose another --out"):
        _build(base, out, policy, _checkpoint_teacher(ckpt), teacher_desc=None)
    assert _digests(out) == before  # nothing touched
    assert _write_checkpoint(ckpt, seed=0) == sha_a  # restored: the resume goes on
    m = _build(base, out, policy, _checkpoint_teacher(ckpt), teacher_desc=None)
    assert m.teacher["checkpoint_sha256"] == [sha_a] and m.teacher["checkpoints"] == ["model.safetensors"]
    verify(out, full=True)


def test_rerunning_a_finished_build_with_another_checkpoint_is_refused(base, policy, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    sha_a = _write_checkpoint(ckpt, seed=0)
    out = tmp_path / "store"
    # a teacher_desc without the weights: the engine adds the sha256 of what the teacher loaded
    m = _build(base, out, policy, _checkpoint_teacher(ckpt), teacher_desc={"model": "test_resnet"})
    assert m.teacher == {"model": "test_resnet", "checkpoint_sha256": [sha_a]}
    before = _digests(out)
    sha_b = _write_checkpoint(ckpt, seed=1)
    stats = BuildStats()
    with pytest.raises(BuildError, match=rf"holds a finished store made with another teacher: checkpoint "
                                         rf".* had sha256 {sha_a}, now {sha_b}; .*restore the original checkpoint "
                                         r"\(the store is then complete as it is\), or choose another --out"):
        _build(base, out, policy, _checkpoint_teacher(ckpt), teacher_desc={"model": "test_resnet"}, stats=stats)
    assert not stats.already_finished and _digests(out) == before
    other = tmp_path / "other"
    m_b = _build(base, other, policy, _checkpoint_teacher(ckpt), teacher_desc={"model": "test_resnet"})
    assert m_b.build_id != m.build_id  # another teacher, another store
    e = m.shards[3]
    (out / e.file).write_bytes((other / e.file).read_bytes())  # a shard of the other teacher's store copied in
    with pytest.raises(IntegrityError, match=rf"{e.file} was written with teacher .*another teacher"):
        open_store(out).record(e.samples[0], e.augs[0])


def test_a_resume_with_another_shard_shape_names_the_changed_setting(base, policy, tmp_path):
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        _build(base, out, policy, Teacher(on_call=_interrupt_after(14)))  # after its first shards
    before = _digests(out)
    with pytest.raises(BuildError) as ei:
        _build(base, out, policy, augs_per_shard=3)
    msg = str(ei.value)
    assert f"augs_per_shard: {APS} -> 3" in msg and "did not write" not in msg and "original settings" in msg, msg
    assert _digests(out) == before


def test_a_start_stopped_by_a_corrupt_image_does_not_block_the_corrected_rerun(policy, tmp_path):
    from fakes.torchvision_data import make_imagefolder
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.errors import ImageDecodeError

    data = tmp_path / "data"
    make_imagefolder(data, classes=3, n_per_class=3, n_val_per_class=0)
    bad = sorted((data / "train").rglob("*.*"))[1]
    bad.write_bytes(b"not an image")
    out = tmp_path / "store"
    kw = dict(policy=policy, teacher=Teacher(num_classes=3), num_augmentations=2, topk=2, seed=0,
              teacher_desc={"model": "tiny"}, progress=False)
    with pytest.raises(ImageDecodeError, match=bad.name):
        build_reinforcements(create_adapter("imagefolder", data, "train"), out, **kw)
    assert (out / ".build" / "settings.json").is_file() and not list((out / "reinforcements").iterdir())
    bad.unlink()  # the fix: the corrupt file is removed (the dataset's sample keys change)
    m = build_reinforcements(create_adapter("imagefolder", data, "train"), out, **kw)
    assert m.num_samples == 8 and not (out / ".build").exists()
    open_store(out)
