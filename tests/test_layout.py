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
