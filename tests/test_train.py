"""examples/train.py: recipes, the three modes end to end on real digits, bitwise resume after a kill, torchrun.

Everything runs on scikit-learn's real handwritten digits with a random-init
timm teacher (its values do not matter for the mechanics tested here); the
expected values come from the library's own replay, timm's Mixup, torch's
one-hot and hand computation, never from the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import _data  # noqa: E402
import train as train_script  # noqa: E402
from _recipe import load_recipe  # noqa: E402
from _train import classification_metrics, expected_calibration_error  # noqa: E402

from imagenet_plus.errors import ArgumentError  # noqa: E402

RECIPE = EXAMPLES / "recipes" / "digits.yaml"
N_TRAIN = 96  # the store covers the first 96 training digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A random-init test_resnet teacher (safetensors + sidecar) and a digits store built with it."""
    from safetensors.torch import save_file
    from torch.utils.data import Subset

    from imagenet_plus.adapters import Digits
    from imagenet_plus.teachers import create_teacher, parse_teacher_list
    from imagenet_plus import create_policy
    from imagenet_plus.builder import build_reinforcements

    tmp = tmp_path_factory.mktemp("train")
    recipe = load_recipe(RECIPE, "erm")
    policy = create_policy(recipe["policy"])
    import timm

    torch.manual_seed(7)
    model = timm.create_model("test_resnet", num_classes=10)
    ckpt = tmp / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    ckpt.with_suffix(".json").write_text(json.dumps({"model": "test_resnet", "num_classes": 10,
                                                     "input_size": [3, 32, 32], "mean": list(policy.mean),
                                                     "std": list(policy.std)}))
    teacher = create_teacher(parse_teacher_list(["test_resnet"], [str(ckpt)]), num_classes=10, pretrained=False)
    store = tmp / "digits-plus"
    base = Subset(Digits(split="train", image_size=32), range(N_TRAIN))
    build_reinforcements(base, store, policy=policy, teacher=teacher, num_classes=10, num_augmentations=2, topk=3,
                         seed=0, dataset_name="digits", teacher_desc=teacher.describe(), samples_per_shard=64,
                         augs_per_shard=2, batch_size=32, progress=False)
    return {"tmp": tmp, "store": str(store), "teacher": str(ckpt), "policy": policy}


def _args(digits, mode: str, out: Path, *extra: str) -> list[str]:
    return ["--recipe", str(RECIPE), "--mode", mode, "--out", str(out), "--no-progress", "--epochs", "2",
            "--batch-size", "16", "--workers", "0", "--reinforcements", digits["store"], "--teacher", "test_resnet",
            "--teacher-checkpoint", digits["teacher"], "--set", f"data.train_samples={N_TRAIN}", *extra]


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("path", sorted((EXAMPLES / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("mode", ["erm", "kd", "plus"])
def test_every_shipped_recipe_resolves_in_every_mode(path, mode):
    r = load_recipe(path, mode)
    assert r["mode"] == mode and r["model"]["name"] and r["epochs"] >= 1
    if mode != "erm":
        assert r["label_smoothing"] == 0.0  # smoothing belongs to hard labels
    if mode == "plus":
        assert r["mix"] is None  # a plus store mixes through its policy


def test_recipe_layers_and_errors(tmp_path):
    r = load_recipe(RECIPE, "erm", [("optimizer.lr", 0.2)])
    assert r["label_smoothing"] == 0.1 and r["optimizer"]["lr"] == 0.2 and r["optimizer"]["momentum"] == 0.9
    assert load_recipe(RECIPE, "kd")["label_smoothing"] == 0.0  # modes.erm applies to erm only
    with pytest.raises(ArgumentError, match=r"unknown recipe key 'optimizer.lrr'.*lr"):
        load_recipe(RECIPE, "erm", [("optimizer.lrr", 0.2)])
    with pytest.raises(ArgumentError, match=r"invalid value 'ten' for recipe key epochs"):
        load_recipe(RECIPE, "erm", [("epochs", "ten")])
    with pytest.raises(ArgumentError, match=r"data.dataset.*Valid values are \{imagenet"):
        load_recipe(RECIPE, "erm", [("data.dataset", "mnist")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: digits}\nmodel: {name: x}\nmodes: {ktd: {}}\n")
    with pytest.raises(ArgumentError, match=r"unknown recipe key 'modes.ktd'.*\{erm, kd, plus\}"):
        load_recipe(bad, "erm")
    with pytest.raises(ArgumentError, match="mix.*a plus store mixes"):
        train_script.Trainer(load_recipe(RECIPE, "plus", [("mix", {"mixup_alpha": 0.2})]), train_script.Dist("cpu"))


# ----------------------------------------------------------------------------- pieces
def test_random_augment_dataset_is_the_policy_replayed_with_fresh_params(digits):
    from imagenet_plus.adapters import Digits
    from imagenet_plus import DeviceReplay

    policy = digits["policy"]
    base = Digits(split="train", image_size=32)
    ds = _data.RandomAugmentDataset(base, policy, seed=3, transform=_data.uint8_identity)
    ds.set_epoch(2)
    idx = [5, 0, 17, 5]
    batch = ds.__getitems__(idx)
    draw_seed = ds._draw_seed
    for (x, label), i in zip(batch, idx):
        image, want_label = base[i]
        params = policy.sample(draw_seed, i, 2, 32, 32, len(base))  # the reference: one record, one apply
        assert torch.equal(x, policy.apply(image, {k: v[0] for k, v in params.items()})) and label == want_label
    assert torch.equal(ds[17][0], batch[2][0])  # per item == batched
    ds.set_epoch(3)
    assert not all(torch.equal(ds[i][0], x) for i, (x, _) in zip(idx, batch))  # fresh params per epoch
    # the device path: DeviceReplay finishes the crops to the same pixels and one-hot targets
    dev = _data.RandomAugmentDataset(base, policy, seed=3, device="cuda")  # dict items; nothing moves
    dev.set_epoch(2)
    items = dev.__getitems__(idx)
    collated = torch.utils.data.default_collate(items)
    x, y = DeviceReplay(policy, 10, device="cpu")(collated)
    want = torch.stack([policy.normalize(b[0]) for b in batch])
    assert torch.equal(x, want)
    assert torch.equal(y, F.one_hot(torch.tensor([b[1] for b in batch]), 10).float())


def test_mix_batch_matches_timm_mixup_and_cutmix_area():
    from timm.data import Mixup

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, generator=g)
    y = F.one_hot(torch.arange(6) % 4, 4).float()
    mix = {"mixup_alpha": 0.2, "cutmix_alpha": 0.0, "switch_prob": 0.5, "prob": 1.0}
    mx, my = _data.mix_batch(x, y, mix, seed=1, epoch=2, step=3)
    lam = float(((my[:, :4] * y).sum(1))[0])  # the weight of the own target (distinct partners' classes)
    ref = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=4, mode="batch")
    ref._params_per_batch = lambda: (lam, False)
    rx = x.clone()
    ry = ref(rx, torch.arange(6) % 4)[1]
    assert torch.allclose(mx, rx, atol=1e-6) and torch.allclose(my, ry, atol=1e-6)
    assert torch.equal(_data.mix_batch(x, y, mix, seed=1, epoch=2, step=3)[0], mx)  # same draw on a rerun
    assert not torch.equal(_data.mix_batch(x, y, mix, seed=1, epoch=2, step=4)[0], mx)
    cut = {"mixup_alpha": 0.0, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0}
    cx, cy = _data.mix_batch(x, y, cut, seed=5, epoch=0, step=0)
    from_partner = (cx == x.flip(0)) & (cx != x)
    area = float(from_partner[0, 0].double().mean())
    assert torch.allclose(cy, y * (1 - area) + y.flip(0) * area, atol=1e-6)
    off = {**mix, "prob": 0.0}
    assert _data.mix_batch(x, y, off, seed=1, epoch=2, step=3)[0] is x


def test_fine_tuning_weights_keep_everything_but_a_classifier_of_another_size(tmp_path):
    from safetensors.torch import save_file

    from _checkpoint import load_pretrained
    from _train import create_model

    torch.manual_seed(0)
    src = create_model("cnn:8x2", 7)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    dst = create_model("cnn:8x2", 10)
    fresh_fc = dst.fc.weight.detach().clone()
    assert load_pretrained(dst, tmp_path / "w.safetensors") == ["fc.bias", "fc.weight"]
    got, want = dst.state_dict(), src.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc."))
    assert torch.equal(dst.fc.weight, fresh_fc)
    with pytest.raises(ValueError, match="does not fit the model: missing"):
        load_pretrained(create_model("cnn:8x3", 10), tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        load_pretrained(dst, tmp_path / "nope.safetensors")


def test_classification_metrics_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]))
    labels = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(75.0) and m["top5"] == pytest.approx(100.0)
    assert m["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.3) + np.log(0.5) + np.log(0.8)) / 4)
    # confidences 0.7, 0.6, 0.5, 0.8 fall in bins (0.667,0.733], (0.533,0.6], (0.467,0.533], (0.733,0.8];
    # each bin holds one prediction: ECE = mean |correct - confidence|
    assert m["ece"] == pytest.approx(100 * (0.3 + 0.6 + 0.5 + 0.2) / 4)
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def test_inputs_of_each_mode(digits):
    """What each mode trains on, against independent references (torch one-hot, the teacher, the library)."""
    from imagenet_plus.teachers import create_teacher, parse_teacher_list
    from imagenet_plus import ReinforcedDataset

    d = train_script.Dist("cpu")
    base = {"set": [("data.train_samples", N_TRAIN), ("reinforcements", digits["store"]),
                    ("teacher.checkpoints", [digits["teacher"]]), ("teacher.models", ["test_resnet"]),
                    ("batch_size", 8), ("workers", 0)]}
    trainers = {m: train_script.Trainer(load_recipe(RECIPE, m, base["set"]), d) for m in ("erm", "kd", "plus")}
    # erm: smoothed one-hot labels of the random augmentation
    t = trainers["erm"]
    images, labels = next(iter(t.loader))
    x, y = t._inputs((images, labels), 0, 0)
    assert torch.equal(x, t.policy.normalize(images))
    assert torch.allclose(y, F.one_hot(labels, 10).float() * 0.9 + 0.01)
    # kd: the same images, the teacher's probabilities as the target
    t = trainers["kd"]
    images, labels = next(iter(t.loader))
    x, y = t._inputs((images, labels), 0, 0)
    ref = create_teacher(parse_teacher_list(["test_resnet"], [digits["teacher"]]), num_classes=10, pretrained=False)
    assert torch.allclose(y, ref(images), atol=1e-6) and torch.equal(x, t.policy.normalize(images))
    # plus: what ReinforcedDataset replays by default (normalised image, densified stored target)
    t = trainers["plus"]
    t.set_epoch(1)
    idx = list(range(8))
    x, y = t._inputs(torch.utils.data.default_collate([t.train_set[i] for i in idx]), 1, 0)
    from imagenet_plus.adapters import Digits
    from torch.utils.data import Subset

    ref = ReinforcedDataset(Subset(Digits(split="train"), range(N_TRAIN)), digits["store"], seed=0)
    ref.set_epoch(1)
    assert torch.equal(x, torch.stack([ref[i][0] for i in idx]))
    assert torch.equal(y, torch.stack([ref[i][1] for i in idx]))


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("mode", ["erm", "kd", "plus"])
def test_each_mode_end_to_end(digits, mode, tmp_path, capsys):
    out = tmp_path / mode
    summary = train_script.main(_args(digits, mode, out))
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["steps_per_epoch"] == N_TRAIN // 16
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and log == summary["history"] == lines[1:]
    for e in log:
        assert e["steps"] == 6 and e["images_per_s"] > 0 and e["epoch_seconds"] >= e["data_seconds"] > 0
        assert e["test"]["n"] == 364 and 0 <= e["test"]["top1"] <= e["test"]["top5"] <= 100
        assert e["test"]["nll"] > 0 and 0 <= e["test"]["ece"] <= 100 and np.isfinite(e["train_loss"])
    assert log[1]["lr"] == pytest.approx(0.0)  # the cosine schedule ends at min_lr
    for name in ("checkpoint.safetensors", "plot.png", "results.json", "config.json"):
        assert (out / name).is_file(), name
    # the saved weights are the trained ones: reloaded, they score what the last epoch logged
    from safetensors.torch import load_file

    from _train import create_model

    model = create_model("cnn:16x2", 10)
    model.load_state_dict(load_file(out / "model.safetensors"))
    trainer = train_script.Trainer(load_recipe(RECIPE, mode, [("data.train_samples", N_TRAIN), ("workers", 0),
                                                             ("reinforcements", digits["store"]),
                                                             ("teacher.checkpoints", [digits["teacher"]]),
                                                             ("teacher.models", ["test_resnet"])]),
                                   train_script.Dist("cpu"))
    assert trainer._evaluate(model) == log[-1]["test"]
    assert json.loads((out / "model.json").read_text())["model"] == "cnn:16x2"


def test_changed_settings_are_refused_in_the_same_out(digits, tmp_path):
    out = tmp_path / "run"
    one = ("--epochs", "1", "--set", "scheduler.warmup_epochs=0")
    train_script.main(_args(digits, "erm", out, *one))
    with pytest.raises(ArgumentError, match=r"other settings \(differing keys: optimizer\)"):
        train_script.main(_args(digits, "erm", out, *one, "--lr", "0.5"))
    train_script.main(_args(digits, "erm", out, *one, "--workers", "1"))  # workers do not change results


def test_crash_and_resume_with_adamw_ema_mixing_and_clipping(digits, tmp_path, monkeypatch):
    """A run that dies after epoch 1 and is rerun ends where an uninterrupted run ends (all optimiser state)."""
    from safetensors.torch import load_file

    extra = ("--set", "optimizer={name: adamw, lr: 0.003, weight_decay: 0.05, kwargs: {betas: [0.9, 0.99]}}",
             "--set", "ema={decay: 0.9}", "--set", "grad_clip=0.5", "--set", "model.kwargs={dropout: 0.2}",
             "--set", "mix={mixup_alpha: 0.4, cutmix_alpha: 1.0}")
    train_script.main(_args(digits, "erm", tmp_path / "full", *extra))
    real = train_script.Trainer.train_epoch

    def dies_in_epoch_2(self, epoch, **kw):
        if epoch == 1:
            raise RuntimeError("simulated crash")
        return real(self, epoch, **kw)

    monkeypatch.setattr(train_script.Trainer, "train_epoch", dies_in_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_script.main(_args(digits, "erm", tmp_path / "crashed", *extra))
    monkeypatch.setattr(train_script.Trainer, "train_epoch", real)
    summary = train_script.main(_args(digits, "erm", tmp_path / "crashed", *extra))
    assert [h["epoch"] for h in summary["history"]] == [1, 2] and "test_ema" in summary["history"][0]
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "crashed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_kd_refuses_a_teacher_without_weights(digits):
    r = load_recipe(RECIPE, "kd", [("data.train_samples", N_TRAIN), ("workers", 0)])  # digits.yaml names no weights
    with pytest.raises(ArgumentError, match="teacher member 'test_resnet' has no weights"):
        train_script.Trainer(r, train_script.Dist("cpu"))


@pytest.mark.slow
def test_kill_and_resume_reaches_the_same_weights_bitwise(digits, tmp_path, capsys):
    """SIGKILL a run after its first checkpoint; rerunning the command resumes to the uninterrupted weights.

    The killed run is a spawned child (a real process, killed mid-run; spawned, not forked, since a fork
    of a process that has run autograd cannot run it again, and any earlier test may have); the
    uninterrupted run and the rerun are this process. Two DataLoader workers and p_original 0.25
    (originals draw fresh params) exercise the worker and epoch plumbing.
    """
    import multiprocessing
    import threading

    from safetensors.torch import load_file

    full, killed = tmp_path / "full", tmp_path / "killed"
    args = lambda out: _args(digits, "plus", out, "--workers", "2", "--set", "p_original=0.25")  # noqa: E731
    p = multiprocessing.get_context("spawn").Process(target=_quiet_main, args=(args(killed),))
    p.start()

    def kill_after_first_checkpoint():
        deadline = time.time() + 120
        while not (killed / "checkpoint.safetensors").is_file() and p.is_alive() and time.time() < deadline:
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)

    watcher = threading.Thread(target=kill_after_first_checkpoint)
    watcher.start()
    assert torch.get_num_threads() == 1
    train_script.main(args(full))
    watcher.join()
    p.join()
    assert p.exitcode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it did not finish
    capsys.readouterr()
    resumed = train_script.main(args(killed))  # the rerun: a fresh process state, same command
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == {
        "event": "resume", "from_epoch": 1, "checkpoint": str(killed / "checkpoint.safetensors")}
    assert len(resumed["history"]) == 2 and json.loads((killed / "config.json").read_text())["recipe"]["workers"] == 2
    a, b = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = ((d / "log.jsonl").read_text().splitlines() for d in (full, killed))
    timing = ("epoch_seconds", "data_seconds", "images_per_s")
    strip = lambda e: {k: v for k, v in json.loads(e).items() if k not in timing}  # noqa: E731
    assert [strip(e) for e in la] == [strip(e) for e in lb] and len(la) == 2


def _quiet_main(argv: list[str]) -> None:
    """``examples/train.py`` in a spawned child, its JSON lines discarded."""
    import contextlib

    torch.set_num_threads(1)  # as tests/conftest.py sets this process: bitwise equality needs the same threads
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        train_script.main(argv)


def _rank(rank: int, port: int, argv: list[str]) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    _quiet_main(argv)


@pytest.mark.slow
def test_two_ranks_as_torchrun_starts_them(digits, tmp_path):
    """Two ranks with torchrun's environment (RANK, WORLD_SIZE, MASTER_*), spawned processes (gloo).

    ``torchrun --nproc-per-node 2 examples/train.py ...`` sets exactly these variables. Spawned, not
    forked: a fork of this process cannot run autograd once any earlier test has.
    """
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    argv = _args(digits, "plus", out, "--epochs", "1", "--set", "scheduler.warmup_epochs=0")
    ctx = multiprocessing.get_context("spawn")
    ranks = [ctx.Process(target=_rank, args=(r, port, argv)) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=240)
    assert [p.exitcode for p in ranks] == [0, 0]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    (epoch,) = json.loads((out / "results.json").read_text())["history"]  # written once, by rank 0
    assert epoch["steps"] == N_TRAIN // 2 // 8  # each rank: half the samples, half the global batch of 16
    assert epoch["test"]["n"] == 364  # every test image evaluated once, over both ranks


def test_gpu_train_check_small_on_cpu(tmp_path, capsys):
    """The GPU training check's CI smoke run (in this process; on a GPU each mode is its own process)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_train_check

    res = gpu_train_check.main(["--small", "--device", "cpu", "--work", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
    assert res["device"] == "cpu" and res["small"] is True
    for mode in ("erm", "plus"):
        assert res[mode]["images_per_s"] > 0 and res[mode]["steps"] > 0
    assert res["plus_over_erm"] == pytest.approx(res["plus"]["images_per_s"] / res["erm"]["images_per_s"])
    shutil.rmtree(tmp_path, ignore_errors=True)


# ----------------------------------------------------------------------------- the command line and its inputs
def _replay_store(root: Path, policy, samples: int | None) -> str:
    """A store of random top-k targets over the first ``samples`` training digits (all when None): no teacher."""
    from torch.utils.data import Subset

    from fakes.replay_store import write_replay_store
    from imagenet_plus.adapters import Digits, adapt

    base = Digits(split="train", image_size=32)
    write_replay_store(root, adapt(base if samples is None else Subset(base, range(samples))), policy,
                       num_augmentations=2, topk=3, samples_per_shard=512, augs_per_shard=2)
    return str(root)


def test_the_script_imports_the_installed_package_not_the_repository(tmp_path):
    """examples/train.py run from a checkout must use the installed imagenet_plus (here: PYTHONPATH), never the
    repository next to it: a decoy package there must not be imported."""
    import subprocess

    repo = tmp_path / "checkout"
    shutil.copytree(EXAMPLES, repo / "examples", ignore=shutil.ignore_patterns("__pycache__", "recipes"))
    (repo / "imagenet_plus").mkdir()
    (repo / "imagenet_plus" / "__init__.py").write_text("raise ImportError('the checkout was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # stands for the installed wheel
    res = subprocess.run([sys.executable, str(repo / "examples" / "train.py"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "--recipe" in res.stdout and "checkout was imported" not in res.stderr


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err  # one line, no traceback
    return err[0]


def test_errors_are_one_line_with_the_clis_exit_codes(digits, tmp_path, capsys):
    assert train_script.run(_args(digits, "erm", tmp_path / "a", "--set", "optimizer.lrr=0.1")) == 2  # usage
    assert "unknown recipe key 'optimizer.lrr'" in _one_line_error(capsys)
    assert train_script.run(["--recipe", str(tmp_path / "nope.yaml"), "--mode", "erm", "--out", "x"]) == 2
    assert "nope.yaml does not exist" in _one_line_error(capsys)
    assert train_script.run(_args(digits, "plus", tmp_path / "a", "--set", "mix={mixup_alpha: 0.2}")) == 2
    assert "a plus store mixes through its own policy" in _one_line_error(capsys)
    args = _args(digits, "plus", tmp_path / "b")
    args[args.index("--reinforcements") + 1] = str(tmp_path / "no-store")
    assert train_script.run(args) == 1  # a failure: the store is not there
    assert "no-store" in _one_line_error(capsys)


def test_kd_teacher_of_another_class_count_names_this_scripts_fix(digits, tmp_path, capsys):
    from safetensors.torch import save_file
    import timm

    model = timm.create_model("test_resnet", num_classes=7)
    seven = tmp_path / "seven.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(seven))
    bare = tmp_path / "bare.safetensors"  # no sidecar: the classifier's rows say 7
    shutil.copy(seven, bare)
    seven.with_suffix(".json").write_text(json.dumps({"model": "test_resnet", "num_classes": 7}))
    for ckpt in (seven, bare):
        args = _args(digits, "kd", tmp_path / ckpt.stem)
        args[args.index("--teacher-checkpoint") + 1] = str(ckpt)
        assert train_script.run(args) == 1
        line = _one_line_error(capsys)
        assert f"{ckpt} ('test_resnet') classifies 7 classes, the dataset has 10" in line
        assert "--teacher-checkpoint" in line and "--num-classes" not in line and "--allow-new-head" not in line
        assert not (tmp_path / ckpt.stem).exists()  # a failed start leaves nothing


def test_a_failed_start_does_not_block_the_corrected_rerun(digits, tmp_path, capsys):
    out = tmp_path / "run"
    args = _args(digits, "plus", out, "--epochs", "1", "--set", "scheduler.warmup_epochs=0")
    wrong = list(args)
    wrong[wrong.index("--reinforcements") + 1] = str(tmp_path / "typo")
    assert train_script.run(wrong) == 1
    assert not (out / "config.json").exists()
    assert train_script.run(args) == 0  # the fixed command starts afresh
    assert json.loads((out / "config.json").read_text())["recipe"]["reinforcements"] == digits["store"]
    # a run killed before its first checkpoint kept nothing: its config.json does not bind the rerun either
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "config.json").write_text(json.dumps({"recipe": {"epochs": 99}, "torch": "x", "world_size": 1}))
    assert train_script.run(_args(digits, "erm", crashed, "--epochs", "1", "--set", "scheduler.warmup_epochs=0")) == 0
    assert json.loads((crashed / "config.json").read_text())["recipe"]["epochs"] == 1
    capsys.readouterr()


def test_one_epoch_under_a_recipe_with_one_warmup_epoch(digits, tmp_path, capsys):
    out = tmp_path / "one"
    assert load_recipe(RECIPE, "erm")["scheduler"]["warmup_epochs"] == 1
    summary = train_script.main(_args(digits, "erm", out, "--epochs", "1"))
    assert summary["epochs"] == 1
    captured = capsys.readouterr()
    assert "scheduler.warmup_epochs=1 lowered to 0" in captured.err
    start = json.loads(captured.out.splitlines()[0])
    assert start["event"] == "start" and any("warmup_epochs=1 lowered to 0" in n for n in start["notes"])
    assert json.loads((out / "config.json").read_text())["recipe"]["scheduler"]["warmup_epochs"] == 0
    train_script.main(_args(digits, "erm", out, "--epochs", "1"))  # the same command again: the same settings


def test_plus_adopts_the_stores_policy_and_says_so(digits, tmp_path, capsys):
    """A 48 px rrc store under the 32 px digits recipe: trains and evaluates at 48 px, records the store's policy."""
    from imagenet_plus import create_policy

    policy = create_policy("rrc", output_size=48)
    store = _replay_store(tmp_path / "rrc48", policy, N_TRAIN)
    out = tmp_path / "plus48"
    args = _args(digits, "plus", out, "--epochs", "1")
    args[args.index("--reinforcements") + 1] = store
    train_script.main(args)
    err = capsys.readouterr().err
    assert "policy 'rrc' at 48 px, the recipe's policy is 'cifar' at 32 px; training on the store's policy" in err
    assert "evaluation at resize 48 / crop 48" in err
    recipe = json.loads((out / "config.json").read_text())["recipe"]
    assert create_policy(recipe["policy"]) == policy and recipe["eval"]["crop"] == 48
    assert json.loads((out / "model.json").read_text())["input_size"] == [3, 48, 48]
    t = train_script.Trainer(load_recipe(RECIPE, "plus", [("reinforcements", store), ("workers", 0),
                                                          ("data.train_samples", N_TRAIN)]), train_script.Dist("cpu"))
    assert next(iter(t.loader))[0].shape[-1] == 48 and next(iter(t.eval_loader))[0].shape[-1] == 48
    assert t.notes and train_script.resolve_run(t.r) == (t.r, [])  # resolving again changes nothing


def test_readme_plus_command_with_a_store_of_every_training_digit(digits, tmp_path):
    """builders/configs/digits-plus.yaml reinforces all 1,433 training digits; the recipe trains on the first 500."""
    from imagenet_plus import ReinforcedDataset
    from imagenet_plus.adapters import Digits

    store = _replay_store(tmp_path / "all", digits["policy"], None)
    t = train_script.Trainer(load_recipe(RECIPE, "plus", [("reinforcements", store), ("workers", 0)]),
                             train_script.Dist("cpu"))
    assert len(t.train_set) == 500
    full = ReinforcedDataset(Digits(split="train"), store, seed=0, transform=_data.uint8_identity)
    for e in (0, 1):
        t.set_epoch(e)
        full.set_epoch(e)
        for i in (0, 77, 499):
            a, b = t.train_set[i], full[i]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_readme_names_what_finetune_teacher_writes_and_that_exif_orientation_is_ignored(tmp_path):
    """The README's teacher passage names finetune_teacher.py's real output; its check table says EXIF
    orientation is not applied, which the package's decoder confirms on a real JPEG with orientation 6."""
    import io
    import re

    from PIL import Image

    from imagenet_plus.imageio import decode_bytes

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    teacher = readme[readme.index("## Reinforce your own ImageFolder"):readme.index("`--teacher-input-size` is")]
    assert "t.safetensors" not in teacher and "`<out>/<model>.safetensors` and `.json`" in teacher
    m = re.search(r"--model\s+(\S+) --out (\S+)` does this and writes `(\S+)\.safetensors`", teacher.replace("\n", " "))
    assert m and m.group(3) == f"{m.group(2)}/{m.group(1)}" and f"--teacher-checkpoint {m.group(3)}.safetensors" in teacher
    assert re.search(r"EXIF orientation tag \| decoded as stored, not rotated", readme)
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_bytes(buf.getvalue(), "x.jpg").size == (40, 24)  # not rotated to 24x40


def test_eval_set_in_memory_serves_the_same_tensors():
    """train.py's per-epoch evaluation reads a small eval set from memory: the very items, in order."""
    from imagenet_plus.adapters import Digits
    from torchvision.transforms import v2

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    ds = _data.EvalDataset(Digits(split="test", image_size=32), transform)
    cached = _data.in_memory(ds)
    assert len(cached) == len(ds) == 364
    for i in (0, 5, 363):
        x, y = ds[i]
        assert torch.equal(cached[i][0], x) and int(cached[i][1]) == y
    assert _data.in_memory(ds, limit_bytes=364 * 3 * 32 * 32 * 4 - 1) is None  # one byte short: read per epoch
