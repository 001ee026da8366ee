"""``python -m imagenet_plus.builder``: the ``imagenet-plus build`` command on its own."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
