"""Public names imported on first use (PEP 562), so a package starts without its heavy dependencies."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_names(package: str, namespace: dict, table: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: name -> the relative module that defines it (cached on use)."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
