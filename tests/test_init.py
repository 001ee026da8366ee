"""The package's public names: all importable, and `import imagenet_plus` stays light."""

from __future__ import annotations

import subprocess
import sys

import imagenet_plus


def test_every_public_name_resolves():
    for name in imagenet_plus.__all__:
        assert getattr(imagenet_plus, name) is not None, name
    assert issubclass(imagenet_plus.ReinforcementError, ValueError)
    assert set(imagenet_plus.__all__) <= set(dir(imagenet_plus))


def test_import_does_not_load_torchvision():
    code = "import sys, imagenet_plus; print('torchvision' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
