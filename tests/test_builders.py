"""The maintainers' builder: recipes, command line, datasets, teachers and teacher fine-tuning.

Teachers are random-init or briefly trained tiny timm models (``test_resnet``) on
real scikit-learn digits or a fake CIFAR-100 written in its real on-disk format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from builders.build import BuildConfig, cli, create_dataset, load_config, main, parse_args
from builders.digits import Digits
from builders.finetune_teacher import FinetuneConfig
from builders.finetune_teacher import main as finetune
from builders.teachers import (IG_RESNEXT_ENSEMBLE, TeacherLoadError, TeacherSpec, create_teacher,
                               parse_teacher_list)
from fakes.torchvision_data import make_cifar100, skip_md5_checks
from imagenet_plus.augment import create_policy
from imagenet_plus.store import open_store, verify

CONFIGS = Path(__file__).resolve().parents[1] / "builders" / "configs"
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
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert (cfg.dataset, cfg.policy, cfg.num_augmentations, cfg.topk, cfg.num_classes) == \
        (dataset, policy, ns, k, classes)
    assert cfg.image_size == 224 and cfg.augs_per_shard == 50 and cfg.split == "train"
    p = create_policy(cfg.policy, output_size=cfg.image_size)
    assert p.output_size == 224
    specs = parse_teacher_list(cfg.teacher, cfg.teacher_checkpoint)
    if dataset == "imagenet":
        assert [s.name for s in specs] == IG and cfg.pretrained
        assert [s.checkpoint for s in specs][:3] == [None] * 3  # timm's weights; 32x48d from a local file
        assert specs[3].checkpoint.endswith("resnext101_32x48d.fb_wsl_ig1b_ft_in1k.safetensors")
    else:
        assert [s.name for s in specs] == IG[:3] and not cfg.pretrained
        assert all(s.checkpoint.startswith(f"checkpoints/{dataset}/") for s in specs)


def test_the_ig_resnext_names_are_timms():
    import timm

    available = set(timm.list_models(pretrained=True))
    assert set(IG[:3]) <= available
    assert IG[3] not in available  # gone from timm: built from timm's ResNet class instead
    with pytest.raises(TeacherLoadError, match="no pretrained weights for resnext101_32x48d.*--teacher-checkpoint"):
        create_teacher([TeacherSpec(IG[3])], pretrained=True)


def test_digits_recipe_and_dataset():
    cfg = load_config(CONFIGS / "digits-plus.yaml")
    assert (cfg.dataset, cfg.device, cfg.num_classes, cfg.source_size) == ("digits", "cpu", 10, 32)
    pol = create_policy(cfg.policy)
    assert pol.output_size == 32 and pol.config["geometry"]["padding"] == 4 and pol.config["hflip"] == 0.0
    train, test = Digits(split="train"), Digits(split="test")
    assert (len(train), len(test)) == (1433, 364)
    assert np.bincount(test.targets).min() >= 35  # stratified split
    img, label = test[3]
    assert img.mode == "RGB" and img.size == (32, 32) and label == test.targets[3]
    assert test.keys[3] == "test/3" and Digits(split="test").data.tobytes() == test.data.tobytes()
    with pytest.raises(ValueError, match=r"Unknown value 'val' for argument split. Valid values are \{train, test\}"):
        Digits(split="val")


def test_config_precedence_and_errors(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("dataset: digits\ntopk: 4\nnum_augmentations: 9\nteacher: [a, b]\n")
    cfg = parse_args(["--config", str(y), "--topk", "2", "--teacher", "x,y,z", "--samples-per-shard", "none"])
    assert (cfg.dataset, cfg.topk, cfg.num_augmentations, cfg.teacher, cfg.samples_per_shard) == \
        ("digits", 2, 9, "x,y,z", None)
    assert parse_args([]) == BuildConfig()
    y.write_text("dataset: digits\ntop_k: 4\n")
    with pytest.raises(ValueError, match=r"r.yaml: unknown config key 'top_k'; valid keys are \{dataset, "):
        load_config(y)
    y.write_text("topk: four\n")
    with pytest.raises(ValueError, match="topk must be an integer, got 'four'"):
        load_config(y)
    with pytest.raises(FileNotFoundError, match="--config .*nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "mnist"])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        parse_args(["--batch-size", "0"])


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"--dataset cifar100 --data-root .* the dataset is missing or "
                                                r"incomplete.*never downloads"):
        create_dataset(BuildConfig(dataset="cifar100", data_root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="folder .*absent does not exist"):
        create_dataset(BuildConfig(dataset="food101", data_root=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match="--data-root is required for --dataset imagenet"):
        create_dataset(BuildConfig(dataset="imagenet"))
    out = tmp_path / "out"
    assert cli(["--dataset", "flowers102", "--data-root", str(tmp_path), "--out", str(out), "--device", "cpu"]) == 2
    assert "error: --dataset flowers102" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- teachers


def test_parse_teacher_list():
    assert parse_teacher_list("a, b") == [TeacherSpec("a"), TeacherSpec("b")]
    assert parse_teacher_list(["a", "b"], ",y.st") == [TeacherSpec("a"), TeacherSpec("b", "y.st")]
    with pytest.raises(ValueError, match="2 checkpoints for 3 teachers"):
        parse_teacher_list("a,b,c", "x,y")
    with pytest.raises(ValueError, match="no model name given"):
        parse_teacher_list(" , ")


def test_ensemble_averages_members_with_their_own_preprocessing():
    torch.manual_seed(0)
    t = create_teacher("test_resnet,test_convnext", num_classes=5, pretrained=False, input_size=40)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    p = t(x)
    assert p.shape == (3, 5) and p.dtype == torch.float32
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    members = []
    for i, m in enumerate(t.members):
        xi = torch.nn.functional.interpolate(x.float(), size=(40, 40), mode="bilinear", antialias=True)
        mean = torch.tensor(t.data_configs[i]["mean"]).view(1, 3, 1, 1) * 255
        std = torch.tensor(t.data_configs[i]["std"]).view(1, 3, 1, 1) * 255
        with torch.no_grad():
            members.append(m((xi - mean) / std).softmax(1))
    assert torch.allclose(p, (members[0] + members[1]) / 2, atol=1e-5)
    d = t.describe()
    assert d["models"] == ["test_resnet", "test_convnext"] and d["num_classes"] == 5
    assert d["data_configs"][0]["input_size"] == [3, 40, 40]
    assert not t.members[0].training
    with pytest.raises(ValueError, match="teacher input must be uint8"):
        t(x.float())


def test_checkpoints_load_strictly_with_clear_errors(tmp_path):
    torch.manual_seed(1)
    ref = create_teacher("test_resnet", num_classes=4, pretrained=False)
    ck = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in ref.members[0].state_dict().items()}, str(ck))
    t = create_teacher([TeacherSpec("test_resnet", str(ck))], num_classes=4, pretrained=True)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(t(x), ref(x))
    with pytest.raises(ValueError, match=r"t.safetensors does not match model 'test_resnet'.*size mismatch"):
        create_teacher([TeacherSpec("test_resnet", str(ck))], num_classes=7)
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint .*gone.safetensors \(for 'test_resnet'\) "
                                                "does not exist"):
        create_teacher([TeacherSpec("test_resnet", str(tmp_path / "gone.safetensors"))], num_classes=4)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        create_teacher([TeacherSpec("test_resnet", str(junk))], num_classes=4)
    with pytest.raises(TeacherLoadError, match="teacher 'no_such_net': building it failed"):
        create_teacher("no_such_net", pretrained=False)
    with pytest.raises(TeacherLoadError, match="downloading its pretrained weights failed.*--teacher-checkpoint"):
        create_teacher("test_resnet", pretrained=True)  # offline: no weights
    ck.with_suffix(".json").write_text(json.dumps({"model": "test_resnet", "num_classes": 4}))
    assert create_teacher([TeacherSpec("test_resnet", str(ck))]).num_classes == 4  # from the sidecar
    with pytest.raises(ValueError, match=r"was trained as 'test_resnet', not 'test_convnext'"):
        create_teacher([TeacherSpec("test_convnext", str(ck))])
    with pytest.raises(ValueError, match=r"teachers disagree on the number of classes"):
        create_teacher([TeacherSpec("test_resnet", str(ck)), TeacherSpec("test_convnext")], pretrained=False)


def test_cli_teacher_failure_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli(["--dataset", "digits", "--teacher", "no_such_net", "--pretrained", "false", "--out", str(out),
              "--device", "cpu"])
    assert rc == 2
    assert "teacher 'no_such_net'" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- fine-tuning + build


def test_finetune_on_digits_then_build_with_the_checkpoint(tmp_path):
    side = finetune(FinetuneConfig(dataset="digits", model="test_resnet", out=str(tmp_path / "t"), pretrained=False,
                                   input_size=32, epochs=1, max_steps=2, batch_size=16, limit_train=32,
                                   limit_eval=32, num_workers=0, device="cpu"))
    ck = tmp_path / "t" / "test_resnet.safetensors"
    assert side["steps"] == 2 and side["num_classes"] == 10 and 0.0 <= side["accuracy"] <= 1.0
    assert json.loads(ck.with_suffix(".json").read_text())["input_size"] == [3, 32, 32]
    assert set(load_file(str(ck))) == set(create_teacher("test_resnet", num_classes=10,
                                                         pretrained=False).members[0].state_dict())
    cfg = load_config(CONFIGS / "digits-plus.yaml")
    cfg.teacher, cfg.teacher_checkpoint = "test_resnet", str(ck)
    cfg.out, cfg.limit_samples, cfg.num_augmentations, cfg.samples_per_shard, cfg.augs_per_shard = \
        str(tmp_path / "store"), 20, 3, 8, 2
    cfg.progress = False
    m = main(cfg)
    assert m.teacher["models"] == ["test_resnet"] and m.teacher["checkpoints"] == ["test_resnet.safetensors"]
    assert m.teacher["data_configs"][0]["input_size"] == [3, 32, 32]  # from the sidecar: no resize
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
