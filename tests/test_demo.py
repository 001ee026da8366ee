"""A smoke run of the end-to-end digits demo at tiny settings (real data, real builder, real training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_digits_demo_quick(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(ROOT / "examples" / "digits_demo.py"), "--out", str(out), "--quick",
           "--train-samples", "128", "--threads", "1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the table: the teacher and both arms, with every column
    for column in ("top-1 (%)", "ECE-15 (%)", "NLL", "confidence (%)", "epoch (s)"):
        assert column in r.stdout, column
    assert "student, baseline" in r.stdout and "student, reinforced" in r.stdout

    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["train_samples_used"] == 128 and res["settings"]["num_augmentations"] == 4
    for arm in ("baseline", "reinforced"):
        a = res["arms"][arm]
        assert 0.0 <= a["top1"]["mean"] <= 100.0 and a["ece"]["mean"] >= 0.0 and a["nll"]["mean"] > 0.0
        assert len(a["top1"]["values"]) == 1 and a["epoch_seconds"]["mean"] > 0
        assert len(a["curves"]["top1"]) == 1 and len(a["curves"]["top1"][0]) == 2  # one seed, two epochs
    members = res["teachers"]["members"]
    assert len(members) == 2 and all(m["top1"] > 30.0 for m in members)  # two quick epochs already learn
    img = Image.open(out / "accuracy.png")
    assert img.format == "PNG" and img.width >= 400

    # the teachers are loadable safetensors with the sidecar builders/teachers.py reads
    for m in members:
        ckpt = Path(m["checkpoint"])
        assert ckpt.suffix == ".safetensors" and ckpt.with_suffix(".json").is_file()
    # the store the demo built is complete and verifies, and the CLI reads it
    from imagenet_plus.cli import main as cli_main
    from imagenet_plus.store import verify

    report = verify(out / "digits-plus", full=True)
    assert report.num_records == 128 * 4
    assert cli_main(["info", str(out / "digits-plus")]) == 0
