"""The build command across processes: torchrun, SIGKILL, Ctrl-C, and the installed package on its own.

Real subprocesses on 48 real digits with a seeded random-init timm ``test_resnet`` teacher:
``torchrun --nproc-per-node 2`` (gloo) equals a single-process build byte for byte; a build
killed with SIGKILL, or interrupted with SIGINT (one line naming the command that resumes it,
exit status 130), resumes to the same bytes; and ``python -m imagenet_plus.builder`` reinforces an
ImageFolder with a teacher checkpoint from a copy of the package alone (no repository).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from builders.build import main, parse_args
from fakes.torchvision_data import make_imagefolder
from imagenet_plus.store import open_store, verify
from imagenet_plus.teachers import create_teacher

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset", "digits", "--split", "test", "--teacher", "test_resnet", "--pretrained", "false",
        "--teacher-input-size", "48", "--num-classes", "10", "--num-augmentations", "4", "--topk", "3",
        "--policy", "cifar", "--image-size", "32", "--seed", "5", "--batch-size", "8", "--num-workers", "0",
        "--device", "cpu", "--samples-per-shard", "8", "--augs-per-shard", "2", "--limit-samples", "48",
        "--progress", "false"]
NUM_SHARDS = 6 * 2


def _env(pythonpath: Path = ROOT) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(pythonpath))
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


def _wait_for_a_shard(proc: subprocess.Popen, shards: Path) -> None:
    deadline = time.monotonic() + 240
    while not (shards.is_dir() and any(p.name.startswith("shard-") for p in shards.iterdir())):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the build wrote no shard in 240 s"
        time.sleep(0.01)


def test_torchrun_two_processes_is_byte_identical(reference, tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "builders" / "build.py"), *ARGS, "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _digests(out) == reference


def test_ranks_with_different_resize_kernels_refuse_before_any_shard(tmp_path):
    """Two ranks (torchrun's variables, set by hand so one rank can differ): rank 1 forces torch's generic
    CPU code (``ATEN_CPU_CAPABILITY=default``: the float resize kernel), rank 0 keeps this machine's. Both
    stop with the same error naming each rank's family, before any shard is written."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = subprocess.run([sys.executable, "-c", "from imagenet_plus.kernels import resize_kernel as k; print(k())"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert here == "uint8", "this test needs a machine whose own kernel is the integer one"
    out = tmp_path / "mixed"
    cmd = [sys.executable, str(ROOT / "builders" / "build.py"), *ARGS, "--out", str(out)]
    procs = []
    for rank in range(2):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        if rank == 1:
            env["ATEN_CPU_CAPABILITY"] = "default"
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode != 0, err[-2000:]
        assert "resize with different kernel families (rank 0: 'uint8', rank 1: 'float')" in err, err[-2000:]
    assert not any(p.name.startswith("shard-") for p in (out / "reinforcements").glob("*"))
    assert not (out / "manifest.json").exists()


def test_sigkill_mid_build_then_resume_is_byte_identical(reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "builders" / "build.py"), *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_a_shard(proc, out / "reinforcements")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    done = [p for p in (out / "reinforcements").iterdir() if p.name.startswith("shard-")]
    assert not (out / "manifest.json").exists() and 1 <= len(done) < NUM_SHARDS
    main(parse_args([*ARGS, "--out", str(out)]))  # the same command again: the lock died with the process
    assert _digests(out) == reference  # no temp files, no .build folder, same bytes


def test_ctrl_c_prints_the_resume_command_and_it_resumes_byte_identically(reference, tmp_path):
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "imagenet_plus.builder", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_a_shard(proc, out / "reinforcements")
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert rc == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    head, _, command = lines[0].partition("resume with: ")
    assert head == "imagenet-plus build: interrupted; finished shards are kept, "
    assert shlex.split(command) == cmd
    assert not (out / "manifest.json").exists() and (out / ".build" / "settings.json").is_file()
    r = subprocess.run(shlex.split(command), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _digests(out) == reference


def test_the_installed_package_alone_reinforces_an_imagefolder_with_a_checkpoint(tmp_path):
    """The README's command, run against a copy of imagenet_plus/ only (as a wheel installs it)."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "imagenet_plus", site / "imagenet_plus", ignore=shutil.ignore_patterns("__pycache__"))
    data = make_imagefolder(tmp_path / "photos", classes=3, n_per_class=4, n_val_per_class=0)
    torch.manual_seed(0)
    teacher = create_teacher("resnet18", num_classes=3, pretrained=False)
    save_file({k: v.contiguous() for k, v in teacher.members[0].state_dict().items()}, str(tmp_path / "t.safetensors"))
    cmd = [sys.executable, "-m", "imagenet_plus.builder", "--dataset", "imagefolder", "--data-root", str(data.root),
           "--teacher", "resnet18", "--teacher-checkpoint", str(tmp_path / "t.safetensors"), "--num-classes", "3",
           "--topk", "3", "--teacher-input-size", "64", "--image-size", "64", "--num-augmentations", "4",
           "--num-workers", "0", "--device", "cpu", "--out", str(tmp_path / "photos-plus")]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(site), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote " in r.stdout and "teacher agreement with the labels over 48 stored augmentations" in r.stdout
    assert "teacher input: resnet18: 64 px augmented image -> 64 px input, no resize" in r.stdout
    verify(tmp_path / "photos-plus", full=True)
    store = open_store(tmp_path / "photos-plus")
    assert store.keys == sorted(data.splits["train"]) and store.num_classes == 3
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(site), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "already holds this finished store" in r.stdout and "nothing to do" in r.stdout
