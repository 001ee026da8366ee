"""The maintainers' builder (``builders/``): recipes, the build settings and command line, teacher fine-tuning.

Teachers are random-init or briefly trained tiny timm models (``test_resnet``) on real
scikit-learn digits or a fake CIFAR-100 written in its real on-disk format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from builders.build import CONFIGS, BuildConfig, cli, create_dataset, load_config, main, parse_args, recipe_path
from builders.finetune_teacher import FinetuneConfig
from builders.finetune_teacher import main as finetune
from fakes.torchvision_data import make_cifar100, skip_md5_checks
from imagenet_plus.adapters import Digits
from imagenet_plus.augment import create_policy
from imagenet_plus.errors import ArgumentError, BuildError
from imagenet_plus.store import open_store, verify
from imagenet_plus.teachers import IG_RESNEXT_ENSEMBLE, TeacherSpec, create_teacher, parse_teacher_list

IG = list(IG_RESNEXT_ENSEMBLE)


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name, dataset, policy, ns, k, classes", [
    ("imagenet-plus", "imagenet", "rrc+ra/re", 400, 10, 1000),
    ("imagenet-plus-rrc", "imagenet", "rrc", 400, 10, 1000),
    ("imagenet-plus-rrc-mix", "imagenet", "rrc+mix", 400, 10, 1000),
    ("imagenet-plus-rrc-mix-ra-re", "imagenet", "rrc+mix+ra/re", 400, 10, 1000),
    ("imagenet-plus-small", "imagenet", "rrc+ra/re", 100, 5, 1000),
    ("imagenet-plus-mini", "imagenet", "rrc+ra/re", 50, 10, 1000),
    ("cifar100-plus", "cifar100", "cifar", 800, 10, 100),
    ("flowers102-plus", "flowers102", "rrc+ra/re", 8000, 10, 102),
    ("food101-plus", "food101", "rrc+ra/re", 800, 10, 101),
])
def test_recipes_hold_the_papers_settings(name, dataset, policy, ns, k, classes):
    cfg = load_config(recipe_path(name))
    assert (cfg.dataset, cfg.policy, cfg.num_augmentations, cfg.topk, cfg.num_classes) == \
        (dataset, policy, ns, k, classes)
    assert cfg.image_size == 224 and cfg.augs_per_shard == 50 and cfg.split == "train"
    assert create_policy(cfg.policy, output_size=cfg.image_size).output_size == 224
    specs = parse_teacher_list(cfg.teacher, cfg.teacher_checkpoint)
    if dataset == "imagenet":
        assert [s.name for s in specs] == IG and cfg.pretrained
        assert [s.checkpoint for s in specs][:3] == [None] * 3  # timm's weights; 32x48d from a local file
        assert specs[3].checkpoint.endswith("resnext101_32x48d.fb_wsl_ig1b_ft_in1k.safetensors")
    else:
        assert [s.name for s in specs] == IG[:3] and not cfg.pretrained
        assert all(s.checkpoint.startswith(f"checkpoints/{dataset}/") for s in specs)


def test_every_recipe_loads_and_unknown_recipes_are_named():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert len(names) == 10 and all(isinstance(load_config(recipe_path(n)), BuildConfig) for n in names)
    with pytest.raises(ArgumentError, match=r"--recipe 'imagenet-pluss': no such recipe; valid values are "
                                            r"\{cifar100-plus, digits-plus"):
        recipe_path("imagenet-pluss")
    assert parse_args(["--recipe", "digits-plus", "--topk", "3"]).topk == 3


def test_the_ig_resnext_names_are_timms():
    import timm

    available = set(timm.list_models(pretrained=True))
    assert set(IG[:3]) <= available
    assert IG[3] not in available  # gone from timm: built from timm's ResNet class instead
    with pytest.raises(BuildError, match="no pretrained weights for resnext101_32x48d.*--teacher-checkpoint"):
        create_teacher([TeacherSpec(IG[3])], pretrained=True)


def test_digits_recipe_and_dataset():
    cfg = load_config(recipe_path("digits-plus"))
    assert (cfg.dataset, cfg.device, cfg.num_classes, cfg.source_size) == ("digits", "cpu", 10, 32)
    pol = create_policy(cfg.policy)
    assert pol.output_size == 32 and pol.config["geometry"]["padding"] == 4 and pol.config["hflip"] == 0.0
    train, test = Digits(split="train"), create_dataset(BuildConfig(dataset="digits", split="test"))
    assert isinstance(test, Digits) and (len(train), len(test)) == (1433, 364)
    assert np.bincount(test.targets).min() >= 35  # stratified split


# ----------------------------------------------------------------------------- settings and command line


def test_config_precedence_and_errors(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("dataset: digits\ntopk: 4\nnum_augmentations: 9\nteacher: [a, b]\n")
    cfg = parse_args(["--config", str(y), "--topk", "2", "--teacher", "x,y,z", "--samples-per-shard", "none",
                      "--allow-new-head"])
    assert (cfg.dataset, cfg.topk, cfg.num_augmentations, cfg.teacher, cfg.samples_per_shard, cfg.allow_new_head) == \
        ("digits", 2, 9, "x,y,z", None, True)
    assert parse_args([]) == BuildConfig() and BuildConfig().topk is None  # topk: min(10, num_classes)
    y.write_text("dataset: digits\ntop_k: 4\n")
    with pytest.raises(ArgumentError, match=r"--config .*r.yaml: unknown config key\(s\) 'top_k'; valid keys are "
                                            r"\{dataset, "):
        load_config(y)
    y.write_text("topk: four\n")
    with pytest.raises(ArgumentError, match=r"r.yaml: Invalid value 'four' for argument topk"):
        load_config(y)
    y.write_text("- a\n")
    with pytest.raises(ArgumentError, match="expected a mapping of settings, got list"):
        load_config(y)
    with pytest.raises(FileNotFoundError, match="--config .*nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ArgumentError, match=r"command line: Unknown value 'mnist' for argument dataset"):
        parse_args(["--dataset", "mnist"])
    with pytest.raises(ArgumentError, match=r"command line: Invalid value 0 for argument batch_size"):
        parse_args(["--batch-size", "0"])
    with pytest.raises(ArgumentError, match=r"Unknown value 'gpu' for argument device"):
        parse_args(["--device", "gpu"])


def test_command_line_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["--dataset", "flowers102", "--data-root", str(tmp_path), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the dataset is missing or incomplete" in err and "never downloads" in err
    assert cli(["--dataset", "digits", "--teacher", "no_such_net", "--pretrained", "false", "--out", str(out),
                "--device", "cpu"]) == 1
    assert "teacher 'no_such_net'" in capsys.readouterr().err
    assert cli(["--recipe", "nope"]) == 2 and "no such recipe" in capsys.readouterr().err
    assert cli(["--dataset", "digits", "--batch-size", "0"]) == 2
    assert "Invalid value 0 for argument batch_size" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- fine-tuning + build


def test_finetune_on_digits_then_build_with_the_checkpoint(tmp_path):
    side = finetune(FinetuneConfig(dataset="digits", model="test_resnet", out=str(tmp_path / "t"), pretrained=False,
                                   input_size=32, epochs=1, max_steps=2, batch_size=16, limit_train=32,
                                   limit_eval=32, num_workers=0, device="cpu"))
    ck = tmp_path / "t" / "test_resnet.safetensors"
    assert side["steps"] == 2 and side["num_classes"] == 10 and 0.0 <= side["accuracy"] <= 1.0
    written = json.loads(ck.with_suffix(".json").read_text())
    assert written["input_size"] == [3, 32, 32] and written["interpolation"] == "bilinear"
    assert set(load_file(str(ck))) == set(create_teacher("test_resnet", num_classes=10,
                                                         pretrained=False).members[0].state_dict())
    cfg = load_config(recipe_path("digits-plus"))
    cfg.teacher, cfg.teacher_checkpoint = "test_resnet", str(ck)
    cfg.out, cfg.limit_samples, cfg.num_augmentations, cfg.samples_per_shard, cfg.augs_per_shard = \
        str(tmp_path / "store"), 20, 3, 8, 2
    cfg.progress = False
    m = main(cfg)
    assert m.teacher["models"] == ["test_resnet"] and m.teacher["checkpoints"] == ["test_resnet.safetensors"]
    assert m.teacher["inputs"][0]["input_size"] == 32  # from the sidecar: no resize
    assert m.teacher["inputs"][0]["input_size_source"] == "checkpoint sidecar"
    assert m.extra == {"limit_samples": 20} and len(m.shards) == 3 * 2
    verify(tmp_path / "store", full=True)
    assert open_store(tmp_path / "store").keys[:2] == ["train/0", "train/1"]


def test_finetune_on_fake_cifar100(tmp_path):
    fake = make_cifar100(tmp_path / "cifar", n_train=12, n_test=6)
    with skip_md5_checks():
        side = finetune(FinetuneConfig(dataset="cifar100", data_root=str(fake.root), model="test_resnet",
                                       out=str(tmp_path / "t"), pretrained=False, input_size=32, epochs=1,
                                       max_steps=1, batch_size=8, num_workers=0, device="cpu"))
    assert side["num_classes"] == 100 and side["steps"] == 1 and side["eval_split"] == "test"
    assert (tmp_path / "t" / "test_resnet.safetensors").is_file()
    assert not list(Path(tmp_path / "t").glob(".*.tmp"))
