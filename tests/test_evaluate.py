"""examples/evaluate.py: ECE against torchmetrics, mCE by hand, the 200-class mapping of ImageNet-R/A on fake
ImageFolder copies, the layout errors, and the whole command on two real (tiny) digits runs of examples/train.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import evaluate  # noqa: E402
from _train import expected_calibration_error  # noqa: E402

from imagenet_plus.errors import ArgumentError  # noqa: E402

WNIDS = [f"n{10000000 + 7 * k:08d}" for k in range(1000)]  # 1000 sorted WordNet-style ids


# ----------------------------------------------------------------------------- metrics
def test_ece_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(0)
    for temperature in (0.3, 1.0, 3.0):
        logits = torch.randn(3000, 10, generator=g, dtype=torch.float64) / temperature
        labels = torch.randint(0, 10, (3000,), generator=g)
        probs = logits.softmax(1)
        conf, pred = probs.max(1)
        ours = evaluate.calibration(conf.numpy(), (pred == labels).numpy())["ece"]
        theirs = 100.0 * float(multiclass_calibration_error(probs.float(), labels, num_classes=10, n_bins=15,
                                                             norm="l1"))
        assert ours == pytest.approx(theirs, abs=1e-4)
        assert ours == pytest.approx(100.0 * expected_calibration_error(probs, labels), abs=1e-9)  # train.py's


def test_ece_by_hand_and_bins():
    # confidences 0.9, 0.9 (bin 13), 0.5 (bin 7: (7/15, 8/15]), 0.1 (bin 1); correct 1, 0, 1, 0
    cal = evaluate.calibration(np.array([0.9, 0.9, 0.5, 0.1]), np.array([1, 0, 1, 0]))
    assert cal["ece"] == pytest.approx(100 * (2 / 4 * 0.4 + 1 / 4 * 0.5 + 1 / 4 * 0.1))
    assert cal["count"][13] == 2 and cal["count"][7] == 1 and cal["count"][1] == 1 and sum(cal["count"]) == 4
    assert cal["accuracy"][13] == pytest.approx(50.0) and math.isnan(cal["accuracy"][0])
    assert evaluate.calibration(np.array([1 / 15]), np.array([1]))["count"][0] == 1  # right-closed bins


def test_mce_by_hand():
    errors = {"a": [10, 20, 30, 40, 50], "b": [5, 5, 5, 5, 5]}
    base = {"a": [20, 30, 40, 50, 60], "b": [10, 10, 10, 10, 10]}
    m = evaluate.mean_corruption_error(errors, 4.0, base, 5.0)
    assert m["ce"] == pytest.approx({"a": 75.0, "b": 50.0}) and m["mce"] == pytest.approx(62.5)
    # relative: (150 - 5 * 4) / (200 - 5 * 5) and (25 - 20) / (50 - 25)
    assert m["relative_ce"] == pytest.approx({"a": 100 * 130 / 175, "b": 20.0})
    assert m["relative_mce"] == pytest.approx((100 * 130 / 175 + 20.0) / 2)
    assert math.isnan(evaluate.mean_corruption_error({"a": [1] * 5}, 0, {"a": [0] * 5}, 0)["mce"])
    # a type the baseline is not hurt by (corrupted errors <= clean error) has no relative CE: left out, named
    m = evaluate.mean_corruption_error({"a": [10] * 5, "b": [6] * 5}, 5.0, {"a": [20] * 5, "b": [4] * 5}, 5.0)
    assert m["relative_undefined"] == ["b"] and m["relative_mce"] == pytest.approx(100 * 25 / 75)
    assert m["mce"] == pytest.approx((50.0 + 150.0) / 2)


# ----------------------------------------------------------------------------- shifted sets
def _folder(root: Path, names, per_class: int = 1, value=lambda k: k) -> Path:
    for k, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (8, 8), (value(k), 0, 0)).save(d / f"img{j}.png")
    return root


class _ClassFromRed(torch.nn.Module):
    """A 1000-class 'model': the red value r of the image is the subset class; logit 10 at its training index,
    and 20 at a training class outside the subset (wrong over 1000 logits, right over the subset's 200)."""

    def __init__(self, indices: list[int], decoy: int) -> None:
        super().__init__()
        self.indices, self.decoy = torch.tensor(indices), decoy

    def forward(self, x):
        k = torch.round(x[:, 0].mean(dim=(1, 2)) * 255).long()
        out = torch.zeros(x.shape[0], 1000)
        out[torch.arange(x.shape[0]), self.indices[k]] = 10.0
        out[:, self.decoy] = 20.0
        return out


@pytest.mark.parametrize("kind", ["imagenet-r", "imagenet-a"])
def test_200_class_mapping(tmp_path, kind):
    rng = np.random.default_rng(1 if kind == "imagenet-r" else 2)
    subset = sorted(rng.choice(WNIDS, size=200, replace=False).tolist())
    root = _folder(tmp_path / kind, subset, per_class=2)
    samples, indices = evaluate.shifted_set(kind, root, WNIDS)
    assert indices == [WNIDS.index(w) for w in subset]  # label k of the copy is training class indices[k]
    assert len(samples) == 400 and [lb for _, lb in samples[::2]] == list(range(200))
    assert all(Path(p).parent.name == subset[lb] for p, lb in samples)
    decoy = next(i for i in range(999, 199, -1) if i not in indices)  # never a label of the copy (0..199)
    run = evaluate.Run("x", "x", _ClassFromRed(indices, decoy), {}, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    loader = torch.utils.data.DataLoader(evaluate.CropImages(samples, 8, 8), batch_size=64)
    over_200 = evaluate._pass([run], loader, torch.device("cpu"), indices)[0]
    over_1000 = evaluate._pass([run], loader, torch.device("cpu"))[0]
    assert over_200["correct"].all() and not over_1000["correct"].any()


def test_1000_class_sets(tmp_path):
    v2 = _folder(tmp_path / "v2", [str(k) for k in range(1000)], value=lambda k: k % 256)
    samples, indices = evaluate.shifted_set("imagenet-v2", v2, WNIDS)
    assert indices is None and sorted(lb for _, lb in samples) == list(range(1000))
    assert all(int(Path(p).parent.name) == lb for p, lb in samples)
    sketch = _folder(tmp_path / "sketch", WNIDS[::-1][:1000], value=lambda k: 0)
    samples, indices = evaluate.shifted_set("imagenet-sketch", sketch, WNIDS)
    assert indices is None and all(WNIDS[lb] == Path(p).parent.name for p, lb in samples)


def test_layout_errors(tmp_path):
    subset = WNIDS[:200]
    with pytest.raises(ArgumentError, match=r"199 class folders, expected 200"):
        evaluate.shifted_set("imagenet-r", _folder(tmp_path / "r199", subset[:199]), WNIDS)
    with pytest.raises(ArgumentError, match=r"folder 'n99999999' is not one of the training classes"):
        evaluate.shifted_set("imagenet-a", _folder(tmp_path / "a", subset[:199] + ["n99999999"]), WNIDS)
    empty = _folder(tmp_path / "empty", subset)
    for f in (empty / subset[5]).iterdir():
        f.unlink()
    with pytest.raises(ArgumentError, match=rf"class folder '{subset[5]}' holds no images"):
        evaluate.shifted_set("imagenet-r", empty, WNIDS)
    with pytest.raises(ArgumentError, match="folder 'cat' is not a class index"):
        evaluate.shifted_set("imagenet-v2", _folder(tmp_path / "v2", [str(k) for k in range(999)] + ["cat"]), WNIDS)
    with pytest.raises(ArgumentError, match="not a folder"):
        evaluate.shifted_set("imagenet-sketch", tmp_path / "missing", WNIDS)
    with pytest.raises(ArgumentError, match="not ImageNet's 1000 WordNet ids"):
        evaluate.shifted_set("imagenet-r", tmp_path / "r199", [str(d) for d in range(10)])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Two real erm runs of examples/train.py on the digits (2 epochs on 64 digits; evaluated on 64)."""
    import contextlib
    import io

    import train as train_script

    tmp = tmp_path_factory.mktemp("eval")
    runs = []
    for seed in (0, 1):
        out = tmp / f"erm-s{seed}"
        with contextlib.redirect_stdout(io.StringIO()):
            train_script.main(["--recipe", str(EXAMPLES / "recipes" / "digits.yaml"), "--mode", "erm", "--out",
                               str(out), "--seed", str(seed), "--epochs", "2", "--workers", "0", "--no-progress",
                               "--set", "data.train_samples=64", "--set", "data.eval_samples=64"])
        runs.append(out)
    return tmp, runs


@pytest.mark.slow
def test_evaluate_end_to_end_on_digits_runs(digits_runs, capsys):
    tmp, (a, b) = digits_runs
    out = tmp / "report"
    res = evaluate.main(["--run", f"erm={a}", "--run", f"erm={b}", "--run", f"ckpt={a / 'checkpoint.safetensors'}",
                         "--baseline", "erm", "--out", str(out), "--samples", "64", "--workers", "0",
                         "--corruptions", "gaussian_noise,pixelate,elastic_transform"])
    printed = capsys.readouterr().out
    for col in ("top-1 (%)", "ECE-15 (%)", "corrupted top-1 (%)", "mCE (%)", "rel. mCE (%)"):
        assert col in printed
    runs = res["runs"]
    assert [r["label"] for r in runs] == ["erm", "erm", "ckpt"]
    for r, folder in zip(runs, (a, b, a)):
        trained = json.loads((folder / "results.json").read_text())["final"]["test"]
        assert r["clean"]["top1"] == trained["top1"] and r["clean"]["n"] == trained["n"] == 64  # train.py's figures
        for k in ("top5", "nll", "ece", "confidence"):
            assert r["clean"][k] == pytest.approx(trained[k], abs=1e-9), k
    # the training checkpoint holds the final weights: the same figures, corrupted ones included
    assert runs[2]["clean"] == runs[0]["clean"] and runs[2]["corruptions"] == runs[0]["corruptions"]
    assert set(runs[0]["corruptions"]) == {"gaussian_noise", "pixelate", "elastic_transform"}
    assert all(len(v) == 5 for v in runs[0]["corruptions"].values())
    assert res["settings"]["table"] == "cifar" and res["settings"]["ece_bins"] == 15
    # mCE by hand from the reported accuracies: the baseline is the mean of the two erm runs
    types = res["settings"]["corruptions"]
    base = {t: [100 - (runs[0]["corruptions"][t][s] + runs[1]["corruptions"][t][s]) / 2 for s in range(5)]
            for t in types}
    ce = [sum(100 - v for v in runs[2]["corruptions"][t]) / sum(base[t]) * 100 for t in types]
    assert runs[2]["mce"]["mce"] == pytest.approx(np.mean(ce))
    labels = res["labels"]
    assert labels["erm"]["mce"]["mean"] == pytest.approx(100.0) and labels["erm"]["runs"] == 2
    assert labels["erm"]["top1"]["values"] == [runs[0]["clean"]["top1"], runs[1]["clean"]["top1"]]
    assert json.loads((out / "results.json").read_text())["labels"]["ckpt"]["top1"]["mean"] == runs[2]["clean"]["top1"]
    assert "| erm |" in (out / "table.md").read_text()
    for png in ("reliability.png", "robustness.png"):
        assert Image.open(out / png).format == "PNG"

    # the same command again: the corruptions are drawn the same
    again = evaluate.main(["--run", f"erm={a}", "--out", str(tmp / "again"), "--samples", "64", "--workers", "0",
                           "--corruptions", "gaussian_noise,pixelate,elastic_transform"])
    assert again["runs"][0]["corruptions"] == runs[0]["corruptions"]


def test_evaluate_errors(digits_runs, tmp_path):
    tmp, (a, _) = digits_runs
    with pytest.raises(ArgumentError, match="no model.safetensors or checkpoint.safetensors there"):
        evaluate.load_run("x", tmp_path)
    (tmp_path / "x.safetensors").write_bytes((a / "model.safetensors").read_bytes())
    with pytest.raises(ArgumentError, match="config.json is missing"):
        evaluate.load_run("x", tmp_path / "x.safetensors")
    with pytest.raises(ArgumentError, match="not ImageNet's 1000 WordNet ids"):
        evaluate.main(["--run", str(a), "--out", str(tmp_path / "o"), "--corruptions", "none", "--samples", "8",
                       "--workers", "0", "--imagenet-r", str(tmp_path)])
    with pytest.raises(ArgumentError, match="--baseline 'kd' is not a run label"):
        evaluate.main(["--run", str(a), "--out", str(tmp_path / "o"), "--corruptions", "none", "--samples", "8",
                       "--workers", "0", "--baseline", "kd"])
    with pytest.raises(ArgumentError, match="--corruptions: unknown 'rain'"):
        evaluate.main(["--run", str(a), "--out", str(tmp_path / "o"), "--corruptions", "rain"])


def test_channels_last_pass_agrees_with_the_training_layout(digits_runs):
    """The corrupted and shifted passes run channels-last copies: the same statistics up to float reassociation."""
    tmp, (a, _) = digits_runs
    run = evaluate.load_run("erm", a)
    base = evaluate._eval_base([run], 64)
    ev = run.recipe["eval"]
    loader = torch.utils.data.DataLoader(evaluate.CropImages(base, ev["resize"], ev["crop"],
                                                             ("gaussian_noise", 3, 0, "cifar")), batch_size=32)
    (plain,) = evaluate._pass([run], loader, torch.device("cpu"))
    fast_runs = evaluate.channels_last_runs([run])
    assert fast_runs[0].model is not run.model  # the clean pass's model is left as train.py laid it out
    assert next(run.model.parameters()).is_contiguous()
    (fast,) = evaluate._pass(fast_runs, loader, torch.device("cpu"), channels_last=True)
    np.testing.assert_allclose(fast["logp"], plain["logp"], atol=1e-4)
    np.testing.assert_allclose(fast["conf"], plain["conf"], atol=1e-4)
    assert (fast["correct"] == plain["correct"]).mean() >= 0.98 and len(fast["correct"]) == 64
