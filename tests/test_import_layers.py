"""The package's imports follow the order that docs/architecture.md states (issue #16), read from the doc itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imagenet_plus"
DOC = ROOT / "docs" / "architecture.md"
# The package root (``__version__``, the public names loaded on first use) and ``python -m imagenet_plus``
# stand outside the order: every module may read ``__version__``.
OUTSIDE = {"__init__", "__main__"}


def layers(text: str) -> list[list[str]]:
    """The groups of the doc's import-order block, lowest first: ``a, b -> c -> ...``."""
    m = re.search(r"Import direction.*?\n```\n(.*?)```", text, re.S)
    assert m, f"{DOC.relative_to(ROOT)}: no 'Import direction' paragraph followed by a ``` block"
    flat = " ".join(m.group(1).split())
    return [[name.strip() for name in group.split(",")] for group in flat.split("->")]


def units() -> set[str]:
    """The package's top-level modules and subpackages."""
    out = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return out - OUTSIDE


def imports(path: Path, known: set[str]):
    """``(line, unit)`` of every import of another part of the package in ``path``, in functions too."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = ["imagenet_plus", *rel[:-1]]  # the package a relative import starts from
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = base + (node.module.split(".") if node.module else [])
            targets = [mod + [a.name] for a in node.names]
        else:
            continue
        for t in targets:
            if t[0] != "imagenet_plus":
                continue
            unit = t[1] if len(t) > 1 and t[1] in known else "__init__"  # `from .. import __version__`: the root
            yield node.lineno, unit


def violations(order: list[list[str]]) -> list[str]:
    rank = {name: n for n, group in enumerate(order) for name in group}
    known = units()
    bad = [f"{DOC.relative_to(ROOT)}: {name!r} is in the import order but not a module of imagenet_plus/"
           for name in sorted(set(rank) - known)]
    bad += [f"imagenet_plus/{name}: not in the import order of {DOC.relative_to(ROOT)}; add it where it belongs"
            for name in sorted(known - set(rank))]
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        unit = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if unit in OUTSIDE or unit not in rank:
            continue
        for line, target in imports(path, known | OUTSIDE):
            if target in OUTSIDE or target == unit or target not in rank:
                continue
            if rank[target] >= rank[unit]:
                bad.append(f"imagenet_plus/{rel.as_posix()}:{line}: {unit} imports {target}, which the order puts "
                           f"{'beside' if rank[target] == rank[unit] else 'above'} it")
    return bad


def test_imports_follow_the_documented_order():
    bad = violations(layers(DOC.read_text(encoding="utf-8")))
    assert not bad, "\n".join(bad)


def test_the_check_catches_an_arrow_against_the_order():
    order = layers(DOC.read_text(encoding="utf-8"))
    swapped = list(order)
    a = next(n for n, g in enumerate(order) if "adapters" in g)
    b = next(n for n, g in enumerate(order) if "identity" in g)
    swapped[a], swapped[b] = order[b], order[a]  # adapters below identity: adapters' imports point up
    bad = violations(swapped)
    assert any("adapters imports identity" in v for v in bad), bad
    assert any("'nothing' is in the import order" in v for v in violations(order + [["nothing"]]))
