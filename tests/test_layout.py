"""The shape of the package (issue #10): short functions, no imports of the repository's scripts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_function_in_the_package_is_over_80_lines():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "longest.py"), str(ROOT / "imagenet_plus"), "--top", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_package_imports_nothing_of_the_repository():
    for path in (ROOT / "imagenet_plus").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in ("builders", "tests", "fakes", "examples", "benchmarks"), (path, name)


def test_no_plain_value_error_in_the_package():
    """A user's mistake raises one of imagenet_plus.errors' classes (issue #16), never a bare ValueError."""
    bad = []
    for path in (ROOT / "imagenet_plus").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            exc = node.exc.func if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) else \
                node.exc if isinstance(node, ast.Raise) else None
            if isinstance(exc, ast.Name) and exc.id == "ValueError":
                bad.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    assert not bad, bad


def test_the_same_mistake_raises_the_same_class():
    import pytest

    from imagenet_plus.augment import ops
    from imagenet_plus.errors import ArgumentError, PolicyError
    from imagenet_plus.schema import encode_topk_ids, id_bits

    with pytest.raises(ArgumentError, match="argument num_classes"):
        id_bits(0)
    with pytest.raises(ArgumentError, match=r"class ids must lie in \[0, 3\)"):
        encode_topk_ids([[0, 5]], 3)
    with pytest.raises(PolicyError, match="unknown RandAugment op 'Blur'"):
        ops.ra_magnitude("Blur", 1, 31, 8, 8, False)
