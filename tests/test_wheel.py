"""The wheel stands alone: built, installed into a fresh environment, used from outside the repository.

The wheel is built from the repository (``pip wheel --no-build-isolation``: no download) and
installed with ``--no-deps`` into a new virtual environment whose only view of the development
environment is a path entry for the third-party packages (torch, timm, ...): the repository is not
on its path and ``imagenet_plus`` resolves to the installed wheel (checked). From a temporary folder
outside the repository it then builds a small digits store with ``imagenet-plus build``, and runs
``imagenet-plus info``, ``verify --full``, ``show`` (a PNG) and one training step with
``ReinforcedDataset``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp / "dist")], tmp, env)
    (wheel,) = (tmp / "dist").glob("imagenet_plus-*.whl")
    _run([sys.executable, "-m", "venv", str(tmp / "venv")], tmp, env)
    py = tmp / "venv" / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).strip())
    # The dev environment's third-party packages, as a plain path entry: its .pth files (the editable
    # install of this repository among them) are not processed, so only the wheel provides imagenet_plus.
    (site / "dev_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp, env)
    work = tmp / "work"
    work.mkdir()
    where = _run([str(py), "-c", "import imagenet_plus, importlib.util as u; print(imagenet_plus.__file__); "
                  "print(u.find_spec('builders') is None and u.find_spec('fakes') is None)"], work, env).split()
    # imagenet_plus comes from the wheel, and nothing of the repository (builders/, tests/fakes) is importable
    assert Path(where[0]).is_relative_to(site) and where[1] == "True", where
    env["MPLBACKEND"] = "Agg"
    return {"py": py, "cli": tmp / "venv" / "bin" / "imagenet-plus", "work": work, "env": env}


def test_the_installed_wheel_builds_inspects_verifies_shows_and_trains(installed):
    cli, work, env, py = installed["cli"], installed["work"], installed["env"], installed["py"]
    store = work / "digits-plus"
    _run([str(cli), "build", "--dataset", "digits", "--split", "test", "--limit-samples", "40", "--teacher",
          "resnet10t", "--pretrained", "false", "--num-augmentations", "3", "--topk", "3",
          "--policy", "cifar", "--image-size", "32", "--source-size", "32", "--num-workers", "0", "--device",
          "cpu", "--samples-per-shard", "16", "--augs-per-shard", "2", "--batch-size", "32", "--out",
          str(store)], work, env)
    info = _run([str(cli), "info", str(store)], work, env)
    assert "digits (split test)" in info and "3 per sample" in info
    verify = _run([str(cli), "verify", str(store), "--full", "--dataset", "digits"], work, env)
    assert "full check of the store files: OK" in verify and "sha256" in verify
    assert "your copy (40 samples, 40 decoded, check=exact" in verify and verify.rstrip().endswith("OK")
    _run([str(cli), "show", str(store), "--index", "2", "--num", "3", "--out", str(work / "grid.png")], work, env)
    assert (work / "grid.png").stat().st_size > 1000
    step = textwrap.dedent(f"""
        import torch
        from torch.utils.data import DataLoader
        from imagenet_plus import ReinforcedDataset, SoftTargetCrossEntropy
        from imagenet_plus.adapters import Digits, adapt
        base = torch.utils.data.Subset(Digits(split="test", image_size=32), range(40))
        ds = ReinforcedDataset(base, {str(store)!r}, seed=0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ds.set_epoch(0)
        x, y = next(iter(DataLoader(ds, batch_size=8, shuffle=True, num_workers=1)))
        loss = SoftTargetCrossEntropy()(model(x), y)
        loss.backward()
        opt.step()
        print("step", float(loss))
    """)
    out = _run([str(py), "-c", step], work, env)
    assert out.startswith("step ")
