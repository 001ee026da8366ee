"""Print the longest functions in the package (issue #10: none over ~80 lines).

Usage: ``python tools/longest.py [--top N] [--limit 80] [PATH]``; exits 1 if any function is longer
than ``--limit`` lines (decorators and docstrings included, as a reader sees them).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def functions(root: Path):
    """``(lines, "path:line name")`` for every function and method under ``root``."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                yield node.end_lineno - start + 1, f"{path.as_posix()}:{node.lineno} {node.name}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default="imagenet_plus")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--limit", type=int, default=80)
    args = ap.parse_args(argv)
    found = sorted(functions(Path(args.path)), reverse=True)
    for n, where in found[: args.top]:
        print(f"{n:4d}  {where}")
    over = [f for f in found if f[0] > args.limit]
    print(f"{len(found)} functions; longest {found[0][0] if found else 0} lines; {len(over)} over {args.limit}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
