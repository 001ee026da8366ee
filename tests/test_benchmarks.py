"""Each benchmark script runs at tiny sizes as a subprocess and prints the JSON keys the README reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402


def _run(script: str, *args: str, timeout: float = 240) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    out = run_all._last_json(r.stdout)
    assert out is not None, f"{script} printed no JSON object: {r.stdout[-2000:]}"
    return out


def test_last_json_parsing():
    assert run_all._last_json('{"a": 1}') == {"a": 1}
    assert run_all._last_json('progress...\n{"a": 1}\n{"b": [1, 2]}\n') == {"b": [1, 2]}
    assert run_all._last_json("no json here\n[1, 2]") is None
    assert run_all._last_json('{"a": 1,\n "b": 2}') == {"a": 1, "b": 2}  # pretty-printed


def test_every_listed_benchmark_exists_and_has_small_sizes():
    for name in run_all.BENCHMARKS:
        assert (BENCH / f"{name}.py").is_file(), name
        assert run_all.quick_args(name), f"{name}: no --quick flag and no QUICK_ARGS entry in run_all.py"
    assert run_all.quick_args("training_cost") == ["--quick"]


def test_training_cost_tiny():
    out = _run("training_cost.py", "--samples", "64", "--num-augmentations", "2", "--epochs", "1",
               "--batch-size", "32")
    assert out["benchmark"] == "training_cost"
    for arm in ("erm", "kd", "plus"):
        assert len(out[arm]["epoch_seconds"]) == 1 and out[arm]["median_epoch_seconds"] > 0
        assert out[arm]["median_data_seconds"] > 0
    assert out["ratio"] == pytest.approx(out["plus"]["median_epoch_seconds"] / out["erm"]["median_epoch_seconds"])
    assert out["kd_ratio"] == pytest.approx(out["kd"]["median_epoch_seconds"] / out["erm"]["median_epoch_seconds"])
    assert out["target_ratio"] == 1.05 and isinstance(out["meets_target"], bool)
    assert out["settings"]["samples"] == 64 and out["settings"]["num_augmentations"] == 2


def test_store_access_tiny():
    out = _run("store_access.py", "--samples", "200", "--augs", "10", "--classes", "100", "--samples-per-shard",
               "100", "--augs-per-shard", "5", "--reads", "300", "--batch", "32", "--open-samples", "2000")
    for key in ("record_warm", "record_fresh_open_cached", "batched_per_record_us", "target_median_us"):
        assert key in out, key
    assert out["record_warm"]["median_us"] > 0


def test_replay_throughput_tiny():
    out = _run("replay_throughput.py", "--images", "6", "--augs", "2", "--seconds", "0.3", "--rounds", "2")
    assert out["benchmark"] == "replay_throughput"
    for key in ("replay_images_per_s", "torchvision_pil_images_per_s", "ratio"):
        assert out[key] > 0, key


def test_run_all_collects_results_and_reports_failures(tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "bench.json"
    monkeypatch.setitem(run_all.QUICK_ARGS, "store_size",
                        ["--samples", "30", "--augs", "8", "--classes", "50", "--kl-records", "300"])
    rc = run_all.main(["--quick", "--only", "store_size", "--out", str(out_file)])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and printed["ok"] is True and printed["quick"] is True
    assert json.loads(out_file.read_text()) == printed
    r = printed["benchmarks"]["store_size"]
    assert r["ok"] and r["command"][0] == "benchmarks/store_size.py"
    size = r["result"]
    assert size["benchmark"] == "store_size" and size["samples"] == 30 and size["augmentations"] == 8
    for key in ("bytes_per_aug", "record_bytes", "reference_bytes_per_aug", "kl_nats_mean", "meets_size_target"):
        assert key in size, key
    assert set(printed["environment"]) >= {"python", "torch", "cpu_count"}
    # a script that fails is reported with its status and stderr, and run_all exits 1
    monkeypatch.setitem(run_all.QUICK_ARGS, "store_size", ["--no-such-flag"])
    rc = run_all.main(["--quick", "--only", "store_size"])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 1 and printed["ok"] is False
    assert printed["benchmarks"]["store_size"]["returncode"] == 2
    assert "--no-such-flag" in printed["benchmarks"]["store_size"]["stderr_tail"]
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "nonsense"])
    assert e.value.code == 2


def test_build_throughput_tiny():
    out = _run("build_throughput.py", "--device", "cpu", "--quick", "--samples", "4", "--augs", "4",
               "--batch-size", "8", "--image-size", "32", "--teacher-input-size", "32")
    assert out["ratio"] > 0 and out["ok"] is True
    assert out["teacher_compile"] == "none" and out["bf16_peak_of"] == "cpu: no bf16 peak known"
    assert out["teacher_fraction_of_bf16_peak"] is None and out["teacher_gflops_per_image"] > 0
    proj = out["projected_imagenet_plus_hours"]
    assert proj["build"]["rate"].startswith("CPU rate") and proj["build"]["hours"] > 0
    assert out["writer_thread_gain"] > 0 and out["build_timings"]["write_s"] > 0


def test_check_build_throughput_small_on_the_cpu():
    """The function ``benchmarks/gpu_check.py`` calls, at its small sizes on the CPU."""
    import argparse

    import build_throughput

    out = build_throughput.check_build_throughput(argparse.Namespace(device="cpu", small=True, batch_size=256))
    assert out["ok"] is True and out["target_ratio"] is None and out["records"] == 32
    assert out["bf16_peak_tflops"] is None and "compile_agreement" not in out


def test_identity_cost_tiny():
    out = _run("identity_cost.py", "--quick")
    assert set(out["items_per_s"]) == {"exact", "resized", "none"} and "overhead_exact" in out


def test_construct_time_tiny():
    out = _run("construct_time.py", "--quick")
    assert out["samples"] == 20_000 and out["construct_seconds_same_order"] > 0


def test_cores_per_gpu_quick_prints_rates_and_no_invented_gpu_figures():
    out = _run("cores_per_gpu.py", "--quick", "--device", "cpu")
    assert out["benchmark"] == "cores_per_gpu" and out["ok"] is True
    rates = out["per_core_items_per_s"]
    for key in ("torchvision_v2", "cpu_replay", "device_replay_workers"):
        assert rates[key] > 0, key
    assert rates["device_replay_workers"] > rates["cpu_replay"]  # workers only read, digest and look up records
    assert out["device_replay_gpu"] == "unmeasured (needs CUDA)"
    for name in ("resnet50", "mobilenetv3_large"):
        m = out["models"][name]
        assert m["train_images_per_s"] is None and m["train_images_per_s_note"] == "unmeasured (needs CUDA)"
        assert all(m[f"cores_{p}"] is None for p in ("torchvision_v2", "cpu_replay", "device_replay_workers"))


def test_gpu_check_device_decode_is_bit_exact_on_the_cpu():
    out = _run("gpu_check.py", "--device", "cpu", "--small", "--only", "device_decode")
    dd = out["device_decode"]
    assert out["ok"] is True and dd["bit_exact"] is True and dd["mean_abs_diff"] == 0.0
    for name in ("rrc+ra/re", "rrc+mix+ra/re"):
        assert dd[name]["decoded"]["device"] > 0 and dd[name]["decoded"]["fallback"] > 0  # CMYK and PNG files
