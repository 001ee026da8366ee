"""``benchmarks/mldr_import.py --quick`` runs and reports what the README quotes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_mldr_import_quick(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("mldr_import")
    finally:
        sys.path.remove(str(BENCH))
    out = bench.main(["--quick", "--workers", "0", "--device", "cpu"])
    assert capsys.readouterr().out.strip().endswith("}")
    assert out["benchmark"] == "mldr_import" and out["settings"]["quick"] is True
    imp = out["import"]
    assert imp["records"] == out["settings"]["samples"] * out["settings"]["ns"] and imp["records_per_s"] > 0
    assert 0 < imp["ratio"] < 1
    assert set(out["size"]) == {"rrc", "rrc+mix", "rrc+ra/re", "rrc+mix+ra/re"}
    for v in out["size"].values():
        assert v["store_bytes"] < v["archive_bytes"] and v["store_record_bytes"] > 0
    assert set(out["projected"]) == set(bench.ARCHIVES)
    ra = out["projected"]["imagenet_plus_randaug"]
    assert ra["record_bytes"] == 38 and ra["projected_gb"] == pytest.approx(1_281_167 * 400 * 38 / 1e9, rel=0.02)
    t = out["training"]
    assert t["ours_items_per_s"] > 0 and t["mldr_items_per_s"] > 0
    assert t["ratio"] == pytest.approx(t["ours_items_per_s"] / t["mldr_items_per_s"], rel=0.01)
    d = out["device_check"]
    assert d["device"] == "cpu" and d["max_abs_diff"] == 0.0 and d["target_max_abs_diff"] < 1e-6
