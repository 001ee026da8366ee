"""The ``imagenet-plus`` command over a small real store (digits, a random-init timm teacher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_plus.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "test_resnet"


def _save_teacher(path: Path, seed: int, shift_classes: int = 0) -> Path:
    """A random-init timm teacher for 32 px digits, saved as safetensors plus its JSON sidecar.

    ``shift_classes`` rolls the classifier rows, so the teacher predicts class ``c + shift`` where the
    unshifted one predicts ``c`` (a deliberately wrong teacher).
    """
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(TEACHER, pretrained=False, num_classes=10)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if shift_classes:
        head = [k for k in state if k.endswith(".weight") and state[k].shape[0] == 10 and state[k].ndim == 2][0]
        bias = head[: -len("weight")] + "bias"
        state[head] = torch.roll(state[head], shift_classes, dims=0).contiguous()
        state[bias] = torch.roll(state[bias], shift_classes, dims=0).contiguous()
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps({
        "model": TEACHER, "num_classes": 10, "input_size": [3, 32, 32],
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 3-augmentation store over the first 40 digits of the test split, in 3 x 2 shards."""
    from builders.build import BuildConfig, main as build_main

    tmp = tmp_path_factory.mktemp("cli")
    ckpt = _save_teacher(tmp / "teacher.safetensors", seed=0)
    (tmp / "wrong").mkdir()
    wrong = _save_teacher(tmp / "wrong" / "teacher.safetensors", seed=0, shift_classes=1)
    cfg = BuildConfig(dataset="digits", split="test", out=str(tmp / "digits-plus"), teacher=TEACHER,
                      teacher_checkpoint=str(ckpt), pretrained=False, num_augmentations=3, topk=3,
                      policy="cifar", image_size=32, num_workers=0, device="cpu", samples_per_shard=16,
                      augs_per_shard=2, limit_samples=40, batch_size=32, progress=False, seed=7)
    build_main(cfg)
    return {"store": tmp / "digits-plus", "ckpt": ckpt, "wrong": wrong, "tmp": tmp}


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    assert "info" in capsys.readouterr().out
    for cmd in ("info", "verify", "show", "export"):
        assert main([cmd, "--help"]) == 0
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["show", "somewhere"]) == 2  # --index and --out are required
    err = capsys.readouterr().err
    assert "required" in err


def test_info_text_and_json(built, capsys):
    assert main(["info", str(built["store"])]) == 0
    out = capsys.readouterr().out
    for word in ("digits (split test)", "test_resnet", "cifar", "3 per sample", "40 (120 records)",
                 "6 (16 samples x 2 augmentations each)", "bytes per augmentation"):
        assert word in out, (word, out)
    assert main(["info", str(built["store"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dataset"] == "digits" and d["split"] == "test"
    assert d["num_samples"] == 40 and d["num_augmentations"] == 3 and d["topk"] == 3 and d["num_classes"] == 10
    assert d["num_shards"] == 6
    shard_files = list((built["store"] / "reinforcements").glob("*.safetensors"))
    assert d["shard_bytes"] == sum(f.stat().st_size for f in shard_files)
    assert d["bytes_per_augmentation"] == pytest.approx(d["shard_bytes"] / 120)
    assert d["teacher"]["models"] == [TEACHER]


def test_info_missing_store_is_a_data_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert main(["info", str(tmp_path)]) == 1  # a folder without manifest.json
    assert "manifest" in capsys.readouterr().err


def test_info_hub_repo_offline_without_cache_is_a_data_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub-cache"), raising=False)
    assert main(["info", "someorg/digits-plus"]) == 1
    err = capsys.readouterr().err
    assert "someorg/digits-plus" in err and "Traceback" not in err


def test_info_reads_a_manifest_file(built, capsys):
    assert main(["info", str(built["store"] / "manifest.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(built["store"])


def test_verify_ok_and_corruption(built, tmp_path, capsys):
    assert main(["verify", str(built["store"]), "--full"]) == 0
    assert "OK" in capsys.readouterr().out
    # a copy with one flipped byte in a shard fails the full check with exit status 1
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(built["store"], bad)
    shard = sorted((bad / "reinforcements").glob("*.safetensors"))[2]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(bad), "--full"]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "Traceback" not in err


def test_verify_with_the_build_teacher_agrees(built, capsys):
    rc = main(["verify", str(built["store"]), "--teacher", TEACHER, "--teacher-checkpoint", str(built["ckpt"]),
               "--dataset", "digits", "--samples", "50", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    t = out["teacher_check"]
    assert t["records"] == 50
    assert t["top1_agreement"] == 1.0
    assert 0.0 <= t["mean_kl"] < 1e-3  # only the 8-bit log-code quantisation of the stored targets


def test_verify_with_a_wrong_teacher_fails(built, capsys):
    rc = main(["verify", str(built["store"]), "--teacher", TEACHER, "--teacher-checkpoint", str(built["wrong"]),
               "--dataset", "digits", "--samples", "30"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "MISMATCH" in captured.out
    assert "do not match the teacher rerun" in captured.err


def test_verify_against_another_split_lists_every_sample(built, capsys):
    rc = main(["verify", str(built["store"]), "--dataset", "digits", "--split", "train", "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 1 and "Traceback" not in out
    # the build used the first 40 samples (limit_samples): the first 40 training digits are compared
    assert out.count("not in the store") == 40 and out.count("missing from the copy") == 40


def test_verify_a_copy_lists_every_bad_file_in_parallel(tmp_path, capsys):
    """One command checks a whole copy, in worker processes, and reports every mismatching sample."""
    import shutil

    from fakes.torchvision_data import make_imagefolder
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.augment import create_policy
    from imagenet_plus.builder import build_reinforcements

    fake = make_imagefolder(tmp_path / "photos", 3, 4, 1)
    policy = create_policy("rrc", output_size=24)
    teacher = lambda u8: torch.softmax(u8.float().mean((2, 3)) / 50.0, dim=-1)  # noqa: E731
    build_reinforcements(create_adapter("imagefolder", fake.root, "train"), tmp_path / "store", policy=policy,
                         teacher=teacher, num_augmentations=2, num_classes=3, topk=2, seed=0, progress=False)
    shutil.copytree(fake.root, tmp_path / "copy")
    ad = create_adapter("imagefolder", tmp_path / "copy", "train")
    paths = [Path(ad.path(i)) for i in range(len(ad))]
    a, b = paths[0].read_bytes(), paths[5].read_bytes()
    paths[0].write_bytes(b)
    paths[5].write_bytes(a)  # swapped
    paths[7].write_bytes(paths[7].read_bytes()[:100])  # truncated
    rc = main(["verify", str(tmp_path / "store"), "--data-root", str(tmp_path / "copy"), "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "3 problem(s)" in out
    for k in (0, 5, 7):
        assert f"key {ad.keys()[k]!r}" in out, k
    assert out.count("content differs") == 2 and "truncated, corrupt or not an image" in out
    assert main(["verify", str(tmp_path / "store"), "--data-root", str(fake.root), "--json"]) == 0


def test_verify_usage_errors(built, capsys):
    assert main(["verify", str(built["store"]), "--teacher-checkpoint", str(built["ckpt"])]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["verify", str(built["store"]), "--samples", "0"]) == 2
    rc = main(["verify", str(built["store"]), "--teacher", TEACHER, "--teacher-checkpoint",
               str(built["tmp"] / "missing.safetensors")])
    assert rc == 1 and "missing.safetensors" in capsys.readouterr().err


def test_show_writes_a_grid(built, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["show", str(built["store"]), "--index", "5", "--num", "3", "--out", str(out)]) == 0
    assert "original + 3 replayed" in capsys.readouterr().out
    img = Image.open(out)
    assert img.format == "PNG" and img.width > 300 and img.height > 150
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    assert arr.std() > 5  # something was drawn
    assert main(["show", str(built["store"]), "--index", "40", "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_module_entry_point(built):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "imagenet_plus", "info", str(built["store"]), "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_samples"] == 40


def test_info_shows_the_teacher_report_agreement_and_warnings(built, tmp_path, capsys):
    import shutil

    from imagenet_plus.store import Manifest

    report = Manifest.load(built["store"]).reports["teacher"]
    assert main(["info", str(built["store"])]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {100 * report['top1_agreement']:.1f}%" in out, out  # the agreement with the labels
    assert f"over {report['records']:,} stored augmentations" in out and "teacher input" in out
    for w in report["warnings"]:
        assert w in out
    assert "teacher weights" in out and "teacher.safetensors sha256 " in out
    # a report with warnings (reports are outside the build id: editing them keeps the store readable)
    copy = tmp_path / "copy"
    shutil.copytree(built["store"], copy)
    d = json.loads((copy / "manifest.json").read_text())
    d["reports"]["teacher"]["warnings"] = ["the teacher's top-1 agrees with the labels on 9.0%, near chance"]
    d["reports"]["import"] = {"warnings": ["no evidence of torchvision's order in this copy"]}
    (copy / "manifest.json").write_text(json.dumps(d))
    assert main(["info", str(copy)]) == 0
    out = capsys.readouterr().out
    import re

    assert re.search(r"^WARNING +the teacher's top-1 agrees with the labels on 9.0%, near chance$", out, re.M), out
    assert re.search(r"^WARNING +import: no evidence of torchvision's order in this copy$", out, re.M), out
    assert main(["info", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reports"]["teacher"]["top1_agreement"] == report["top1_agreement"]


def _build_args(out: Path, ckpt: Path) -> list[str]:
    """The ``imagenet-plus build`` flags of the ``built`` fixture's store."""
    return ["build", "--dataset", "digits", "--split", "test", "--out", str(out), "--teacher", TEACHER,
            "--teacher-checkpoint", str(ckpt), "--pretrained", "false", "--num-augmentations", "3", "--topk", "3",
            "--policy", "cifar", "--image-size", "32", "--num-workers", "0", "--device", "cpu",
            "--samples-per-shard", "16", "--augs-per-shard", "2", "--limit-samples", "40", "--batch-size", "32",
            "--progress", "false", "--seed", "7"]


def test_rerunning_a_build_with_another_teacher_file_of_the_same_name_is_refused(built, tmp_path, capsys):
    import hashlib
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built["store"], copy)
    assert main(_build_args(copy, built["ckpt"])) == 0
    assert "nothing to do" in capsys.readouterr().out  # the same teacher: the store is finished
    wrong = built["wrong"]  # also named teacher.safetensors, other weights
    assert wrong.name == built["ckpt"].name
    assert main(_build_args(copy, wrong)) == 1
    out, err = capsys.readouterr()
    old, new = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (built["ckpt"], wrong))
    assert "nothing to do" not in out + err
    assert f"checkpoint teacher.safetensors of {TEACHER} had sha256 {old}, now {new}" in err
    assert "restore the original checkpoint" in err and "another --out" in err


def test_verify_names_the_full_flag_on_the_command_line(built, capsys):
    assert main(["verify", str(built["store"])]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "full=True" in line]
    assert lines and all("--full" in line for line in lines), lines


def _verify_command(store: Path) -> list[str]:
    return [sys.executable, "-m", "imagenet_plus", "verify", str(store), "--full"]


def test_verify_into_a_closed_pipe_exits_quietly(built):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the reader is gone before the first write: every write fails with EPIPE
    p = subprocess.Popen(_verify_command(built["store"]), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    # and the shell case of the report: `... | head -2`
    r = subprocess.run(["bash", "-c", "set -o pipefail; \"$@\" | head -2", "bash", *_verify_command(built["store"])],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert len(r.stdout.splitlines()) == 2 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode in (0, 141)


def test_export_from_the_installed_package_loads_with_datasets(built, tmp_path):
    """`imagenet-plus export`, run against a copy of imagenet_plus/ only (as a wheel installs it), then datasets."""
    import shutil

    import datasets

    from imagenet_plus.hf import create_transform
    from imagenet_plus.store import open_store

    site = tmp_path / "site"
    shutil.copytree(ROOT / "imagenet_plus", site / "imagenet_plus", ignore=shutil.ignore_patterns("__pycache__"))
    pub = tmp_path / "pub"
    r = subprocess.run([sys.executable, "-m", "imagenet_plus", "export", str(built["store"]), "--out", str(pub),
                        "--no-progress"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported" in r.stdout and "load_dataset" in r.stdout, r.stdout
    store = open_store(built["store"])
    ds = datasets.load_dataset("parquet", data_files=str(pub / "data" / "*.parquet"), split="train")
    assert len(ds) == store.manifest.num_samples and "image" in ds.column_names  # digits may be redistributed
    assert ds["key"] == list(store.keys)
    item = ds.with_transform(create_transform(str(pub), seed=0))[0]
    assert set(item) == {"pixel_values", "soft_target"}
    assert float(item["soft_target"].sum()) == pytest.approx(1, abs=1e-5)
    assert main(["export", str(built["store"]), "--out", str(pub), "--no-progress"]) == 1  # Parquet exists
