"""What the builder refuses up front, bad files during a build, and one build at a time per output folder.

Real files: a fake ImageFolder written in its on-disk layout (crops of real photos), real digits.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from fakes.torchvision_data import make_imagefolder
from imagenet_plus.adapters import Digits, create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.builder import build_reinforcements
from imagenet_plus.errors import BuildError, ImageDecodeError
from imagenet_plus.store import open_store

S = 24


class Teacher:
    """A fixed random linear teacher over pixels that declares its class count; records its calls."""

    def __init__(self, num_classes: int, on_call=None):
        g = torch.Generator().manual_seed(0)
        self.num_classes = num_classes
        self.w = torch.randn(3 * S * S, num_classes, generator=g) * 0.01
        self.calls = 0
        self.on_call = on_call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return (x.float().flatten(1) @ self.w).softmax(-1)


@pytest.fixture()
def folder(tmp_path):
    return make_imagefolder(tmp_path / "data", classes=3, n_per_class=3, n_val_per_class=0)


def _policy(kind: str = "rrc"):
    if kind == "rrc":
        return create_policy("rrc", output_size=S)
    return create_policy("cifar", output_size=S, geometry={"kind": "pad_crop", "padding": 2})


def _build(data, out, teacher, **kw):
    args = dict(policy=_policy(), num_augmentations=2, seed=0, samples_per_shard=4, augs_per_shard=2, batch_size=4,
                progress=False)
    args.update(kw)
    return build_reinforcements(data, out, teacher=teacher, **args)


def test_a_teacher_of_other_classes_is_refused_before_any_work(folder, tmp_path):
    """A 5-class teacher over a 3-class ImageFolder used to build fine and be rejected by ReinforcedDataset."""
    data = create_adapter("imagefolder", folder.root, "train")
    teacher = Teacher(5)
    with pytest.raises(BuildError, match=r"the teacher has 5 classes but the dataset imagefolder has 3 \(n01440764, "
                                         r"n01443537, n01484850\); a store of 5 classes would be refused by "
                                         r"ReinforcedDataset. Use a teacher trained on the dataset's 3 classes"):
        _build(data, tmp_path / "out", teacher)
    with pytest.raises(BuildError, match="the teacher has 5 classes but num_classes is 3"):
        _build(data, tmp_path / "out", teacher, num_classes=3)
    assert teacher.calls == 0 and not (tmp_path / "out").exists()


def test_topk_defaults_to_the_class_count_and_the_build_replays(folder, tmp_path):
    data = create_adapter("imagefolder", folder.root, "train")
    m = _build(data, tmp_path / "out", Teacher(3))
    assert (m.topk, m.num_classes, m.dataset, m.split) == (3, 3, "imagefolder", "train")
    store = open_store(tmp_path / "out")
    assert store.keys == data.keys() and len(set(store.keys)) == 9
    assert m.reports["teacher"]["records"] == 18 and m.reports["teacher"]["top_n"] == 3


class _Keyed(torch.utils.data.Dataset):
    """A user's dataset exposing ``keys`` (adapted generically)."""

    def __init__(self, keys, targets):
        self.keys, self.targets = list(keys), list(targets)
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in keys]

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


@pytest.mark.parametrize("keys, targets, message", [
    (["a", "b", "a", "c"], [0, 1, 0, 1], r"1 duplicate sample key\(s\) .*'a' \(samples 0 and 2\).*make the keys "
                                         r"unique"),
    (["a", "", "c", "d"], [0, 1, 0, 1], r"1 sample\(s\) .* have an empty key \(samples \[1\]\)"),
    (["a", "b", "c", "d"], [0, 1, 4, 1], r"1 label\(s\) outside \[0, 2\): sample 2 \(key 'c'\) has label 4"),
])
def test_keys_and_labels_are_checked_before_any_work(tmp_path, keys, targets, message):
    teacher = Teacher(2)
    with pytest.raises(BuildError, match=message):
        _build(_Keyed(keys, targets), tmp_path / "out", teacher, dataset_name="mine")
    assert teacher.calls == 0 and not (tmp_path / "out").exists()


def test_an_image_whose_params_cannot_be_stored_is_refused_before_its_teacher_batch(tmp_path):
    """pad-crop offsets are 16-bit: a 1 x 3000 px strip resized to a 24 px short side would need 72000."""
    root = tmp_path / "data"
    for cls, size in (("a", (3000, 1)), ("b", (40, 30))):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / cls / "x.png")
    teacher = Teacher(2)
    with pytest.raises(BuildError, match=r"sample 0 \(key 'a/x.png', file .*a/x.png\): a 1x3000 image resized to a "
                                         r"24 px shorter side is 72000 px long; its pad-crop offsets"):
        _build(create_adapter("imagefolder", root, "train"), tmp_path / "out", teacher, policy=_policy("pad"))
    assert teacher.calls == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_jpeg_is_an_error_naming_the_file(folder, tmp_path, workers):
    data = create_adapter("imagefolder", folder.root, "train")
    victim = next(p for p in sorted(folder.root.rglob("*.jpg")))
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(ImageDecodeError, match=rf"{victim.name}"):
        _build(data, tmp_path / "out", Teacher(3), num_workers=workers)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_second_build_of_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    """The first build holds the folder's lock; the second is refused with its pid and the first completes."""
    data = torch.utils.data.Subset(Digits(split="test", image_size=S), range(12))
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        assert release.wait(60)

    first = Teacher(10, on_call=hold)
    result: dict = {}

    def run_first():
        try:
            result["manifest"] = _build(data, tmp_path / "out", first)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert started.wait(60)
        second = Teacher(10)
        with pytest.raises(BuildError, match=rf"another build \(pid {os.getpid()}\) is writing .*out; wait for it or "
                                             r"use another --out"):
            _build(data, tmp_path / "out", second)
        assert second.calls == 0
    finally:
        release.set()
        first.on_call = None
        thread.join(120)
    assert "error" not in result, result.get("error")
    assert result["manifest"].num_samples == 12 and (tmp_path / "out" / "manifest.json").is_file()
    assert not (tmp_path / "out" / ".build").exists()


def test_the_class_count_advice_is_the_same_with_and_without_num_classes(folder, tmp_path, capsys):
    """A 5-class checkpoint over a 3-class folder: both runs advise a teacher trained on 3 classes, never a circle."""
    import json

    import timm
    from safetensors.torch import save_file

    from imagenet_plus.builder.cli import main

    torch.manual_seed(0)
    ckpt = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=5).state_dict().items()},
              str(ckpt))
    ckpt.with_suffix(".json").write_text(json.dumps({"model": "test_resnet", "num_classes": 5,
                                                     "input_size": [3, S, S]}))
    argv = ["--dataset", "imagefolder", "--data-root", str(folder.root), "--out", str(tmp_path / "out"),
            "--teacher", "test_resnet", "--teacher-checkpoint", str(ckpt), "--num-augmentations", "2",
            "--device", "cpu", "--num-workers", "0", "--progress", "false"]
    errors = []
    for extra in ([], ["--num-classes", "3"]):
        assert main(argv + extra) == 1
        errors.append(capsys.readouterr().err)
    for err in errors:
        assert "trained on" in err and "3 classes" in err and "--num-classes 5" not in err, err
        assert "(--num-classes 3)" not in err and "pass --num-classes 3" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cores, want", [(2, 2), (1, 1), (64, 8)])
def test_the_default_worker_count_is_what_the_machine_has(monkeypatch, cores, want):
    """8 workers on a 2-core machine made torch warn about oversubscription; the default follows the cores."""
    import warnings

    import argparse

    from imagenet_plus.builder.cli import add_arguments, config_from_args
    from imagenet_plus.builder.config import BuildConfig

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_arguments(parser)
    assert BuildConfig().num_workers == want and config_from_args(parser.parse_args([])).num_workers == want
    loader = torch.utils.data.DataLoader(range(4), num_workers=BuildConfig().num_workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.check_worker_number_rationality()
