"""``builders/build.py`` across processes: torchrun output equals a single-process build byte for byte,
and a build killed with SIGKILL resumes to the same bytes.

Real subprocesses (``python -m torch.distributed.run --nproc-per-node 2`` with the gloo
backend, and a plain ``python builders/build.py`` killed after its first shard) on 48
real digits with a seeded random-init timm ``test_resnet`` teacher.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders.build import main, parse_args

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset", "digits", "--split", "test", "--teacher", "test_resnet", "--pretrained", "false",
        "--teacher-input-size", "48", "--num-classes", "10", "--num-augmentations", "4", "--topk", "3",
        "--policy", "cifar", "--image-size", "32", "--seed", "5", "--batch-size", "8", "--num-workers", "0",
        "--device", "cpu", "--samples-per-shard", "8", "--augs-per-shard", "2", "--limit-samples", "48",
        "--progress", "false"]
NUM_SHARDS = 6 * 2


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "store"
    m = main(parse_args([*ARGS, "--out", str(out)]))
    assert len(m.shards) == NUM_SHARDS
    return _digests(out)


def test_torchrun_two_processes_is_byte_identical(reference, tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "builders" / "build.py"), *ARGS, "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _digests(out) == reference


def test_sigkill_mid_build_then_resume_is_byte_identical(reference, tmp_path):
    out = tmp_path / "killed"
    shards = out / "reinforcements"
    cmd = [sys.executable, str(ROOT / "builders" / "build.py"), *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (shards.is_dir() and any(p.name.startswith("shard-") for p in shards.iterdir())):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the build wrote no shard in 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    done = [p for p in shards.iterdir() if p.name.startswith("shard-")]
    assert not (out / "manifest.json").exists() and 1 <= len(done) < NUM_SHARDS
    main(parse_args([*ARGS, "--out", str(out)]))  # the same command again
    assert _digests(out) == reference  # no temp files, no .build folder, same bytes
