"""A smoke run of the end-to-end digits demo at tiny settings (real data, real builder, three real arms)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))


@pytest.mark.slow
def test_digits_demo_quick(tmp_path, capsys):
    """``make demo`` at smoke sizes, in this process (``python examples/digits_demo.py`` calls the same main)."""
    import digits_demo

    out = tmp_path / "demo"
    returned = digits_demo.main(["--out", str(out), "--quick", "--threads", "1"])
    printed = capsys.readouterr().out
    # the table: the teacher and the three arms, with every column
    for column in ("top-1 (%)", "ECE-15 (%)", "NLL", "confidence (%)", "steps", "epoch (s)", "vs ERM"):
        assert column in printed, column
    for row in ("teacher ensemble", "student, ERM", "student, KD", "student, Plus (", "student, Plus, 2 records"):
        assert row in printed, row

    res = json.loads((out / "results.json").read_text())
    assert res["arms"]["plus"]["top1"] == returned["arms"]["plus"]["top1"]
    assert res["settings"]["train_samples"] == 128 and res["settings"]["num_augmentations"] == 4
    assert set(res["arms"]) == {"erm", "kd", "plus", "plus-m2"}  # quick: M = 2 for the fourth arm
    for arm, a in res["arms"].items():
        assert 0.0 <= a["top1"]["mean"] <= 100.0 and a["ece"]["mean"] >= 0.0 and a["nll"]["mean"] > 0.0
        assert len(a["top1"]["values"]) == 1 and a["epoch_seconds"]["mean"] > 0 and a["images_per_s"]["mean"] > 0
        # every arm ran the same number of steps: 128 images, batch 32, two epochs (M = 2: one pass of 2 records)
        hist = json.loads((out / "students" / f"{arm}-s0" / "results.json").read_text())["history"]
        assert [h["steps"] for h in hist] == ([8] if arm == "plus-m2" else [4, 4]) and a["steps"] == 8
        assert a["curves"]["epoch"] == [[2] if arm == "plus-m2" else [1, 2]]  # one seed; records per sample so far
    assert res["arms"]["erm"]["epoch_vs_erm"] == 1.0
    # the evaluation: every student clean and corrupted, the robustness columns printed, mCE against ERM
    for column in ("corrupted top-1 (%)", "mCE (%)", "rel. mCE (%)", "top-5 (%)"):
        assert column in printed, column
    ev = res["evaluation"]
    assert ev["corruptions"] == list(digits_demo.QUICK_CORRUPTIONS) and ev["table"] == "cifar"
    assert ev["arms"]["erm"]["mce"]["mean"] == pytest.approx(100.0)  # one ERM seed: its own baseline
    for arm in ("erm", "kd", "plus", "plus-m2"):
        assert ev["arms"][arm]["top1"]["values"] == res["arms"][arm]["top1"]["values"]  # train.py's final figures
        assert set(ev["arms"][arm]["per_type"]) == set(digits_demo.QUICK_CORRUPTIONS)
    for png in ("reliability.png", "robustness.png"):
        assert Image.open(out / "evaluation" / png).format == "PNG"
    assert json.loads((out / "evaluation" / "results.json").read_text())["settings"]["samples"] == 128
    members = res["teachers"]["members"]
    assert len(members) == 2 and all(m["top1"] > 30.0 for m in members)  # two quick epochs already learn
    img = Image.open(out / "accuracy.png")
    assert img.format == "PNG" and img.width >= 800

    # the teachers are safetensors with the sidecar imagenet_plus.teachers reads (written by examples/train.py)
    for m in members:
        ckpt = Path(m["checkpoint"])
        assert ckpt.suffix == ".safetensors" and json.loads(ckpt.with_suffix(".json").read_text())["model"] == \
            "test_resnet"
    # the store the demo built is complete and verifies, and the CLI reads it
    from imagenet_plus.cli import main as cli_main
    from imagenet_plus.store import verify

    report = verify(out / "digits-plus", full=True)
    assert report.num_records == 128 * 4
    assert cli_main(["info", str(out / "digits-plus")]) == 0
