"""The build knows when its teacher is wrong: a 32 px digits teacher fed 224-ish px images (the issue's finding).

A ``test_resnet`` trained here for 40 steps on real digits at 32 px (about 95% test accuracy)
is saved without its sidecar. timm's default input size for ``test_resnet`` is 160 px: a build
that trusted it would feed the teacher 5x upscaled images, on which it is at chance. The build
refuses that guess; with ``--teacher-input-size 32`` or a sidecar it agrees with the labels;
told to use 160 px on purpose it builds and warns (resize and near-chance), in the manifest too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from imagenet_plus.adapters import create_adapter
from imagenet_plus.builder.cli import main
from imagenet_plus.store import open_store
from imagenet_plus.teachers import TeacherSpec, create_member

pytestmark = pytest.mark.slow


#: The digits recipe's policy at a milder strength the tiny teacher was trained for (1 px shifts, one RA op).
POLICY = {"name": "cifar", "output_size": 32, "geometry": {"kind": "pad_crop", "padding": 1}, "hflip": 0.0,
          "randaugment": {"num_ops": 1, "magnitude": 5}, "erasing": None}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A test_resnet trained on 400 real 32 px digits (random 1 px shifts), saved without a sidecar."""
    torch.manual_seed(0)
    data = create_adapter("digits", None, "train", image_size=32)
    x = torch.stack([torch.from_numpy(np.array(data.load(i).image)).permute(2, 0, 1) for i in range(400)])
    y = torch.as_tensor(data.labels()[:400])
    model, inputs = create_member(TeacherSpec("test_resnet"), num_classes=10, pretrained=False)
    xn = (x.float() / 255 - torch.tensor(inputs.mean).view(3, 1, 1)) / torch.tensor(inputs.std).view(3, 1, 1)
    black = -inputs.mean[0] / inputs.std[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=60)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,), generator=g)
        dy, dx = (int(v) for v in torch.randint(0, 3, (2,), generator=g))
        xb = F.pad(xn[idx], [1, 1, 1, 1], value=black)[:, :, dy:dy + 32, dx:dx + 32]
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    folder = tmp_path_factory.mktemp("teacher")
    path = folder / "digits32.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.eval().state_dict().items()}, str(path))
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"policy": POLICY, "num_augmentations": 4}))
    return path


def _args(checkpoint, out, *extra: str) -> list[str]:
    return ["--config", str(checkpoint.parent / "recipe.yaml"), "--dataset", "digits", "--split", "test",
            "--limit-samples", "60", "--teacher", "test_resnet", "--teacher-checkpoint", str(checkpoint),
            "--num-classes", "10", "--topk", "5", "--samples-per-shard", "32", "--augs-per-shard", "4",
            "--batch-size", "32", "--num-workers", "0", "--device", "cpu", "--progress", "false", "--out", str(out),
            *extra]


def test_a_guessed_input_size_resizing_5x_is_refused_before_any_work(checkpoint, tmp_path, capsys):
    assert main(_args(checkpoint, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "has no .json sidecar saying the input size it was trained at" in err
    assert "architecture's default 160 px was assumed, and the 32 px augmented images would be resized 5x" in err
    assert "--teacher-input-size 32" in err and "student reached 9.5%" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_with_its_input_size_the_teacher_agrees_with_the_labels(checkpoint, tmp_path, capsys):
    assert main(_args(checkpoint, tmp_path / "flag", "--teacher-input-size", "32")) == 0
    out = capsys.readouterr()
    report = open_store(tmp_path / "flag").manifest.reports["teacher"]
    assert report["top1_agreement"] > 0.75 and report["warnings"] == [] and "WARNING" not in out.err
    (member,) = report["input_pipeline"]
    assert (member["input_size"], member["image_size"], member["resize_factor"]) == (32, 32, 1.0)
    assert member["input_size_source"] == "input_size argument" and member["checkpoint"] == "digits32.safetensors"
    assert f"top-1 {100 * report['top1_agreement']:.1f}%" in out.out and "no resize" in out.out
    # A sidecar saying 32 px gives the same records without the flag.
    checkpoint.with_suffix(".json").write_text(json.dumps({"model": "test_resnet", "num_classes": 10,
                                                           "input_size": [3, 32, 32]}))
    try:
        assert main(_args(checkpoint, tmp_path / "sidecar")) == 0
    finally:
        checkpoint.with_suffix(".json").unlink()
    side = open_store(tmp_path / "sidecar")
    assert side.manifest.reports["teacher"]["input_pipeline"][0]["input_size_source"] == "checkpoint sidecar"
    a, b = open_store(tmp_path / "flag"), side
    assert all(np.array_equal(a.targets(i, j)[0], b.targets(i, j)[0]) for i in range(60) for j in range(4))


def test_resized_on_purpose_it_builds_and_warns_loudly(checkpoint, tmp_path, capsys):
    assert main(_args(checkpoint, tmp_path / "big", "--teacher-input-size", "160")) == 0
    out = capsys.readouterr()
    report = open_store(tmp_path / "big").manifest.reports["teacher"]
    assert report["top1_agreement"] < 0.2 and report["chance_top1"] == 0.1  # at chance: the 9.5% student
    resize, chance = report["warnings"]
    assert "the 32 px augmented images are resized 5x to its 160 px input" in resize
    assert "near chance (10.0%)" in chance
    assert out.err.count("WARNING: ") == 2 and resize in out.err and chance in out.err
    assert "resized 5x (bilinear, antialiased)" in out.out
