"""``imagenet-plus show``: a PNG grid of an image and its replayed augmentations, captioned with the teacher's top-3."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EXIT_OK
from ._common import UsageError, add_data_arguments, open_replay, positive_int


def _caption(ids: np.ndarray, probs: np.ndarray, classes: Sequence[str] | None, k: int = 3) -> str:
    parts = []
    for c, p in zip(ids[:k], probs[:k]):
        name = classes[int(c)] if classes is not None and int(c) < len(classes) else str(int(c))
        parts.append(f"{name[:14]} {100 * float(p):.1f}%")
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("imagenet-plus show draws with matplotlib: pip install 'imagenet-plus[demo]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..hub import open_reinforcements

    store = open_reinforcements(args.store)
    m = store.manifest
    if not 0 <= args.index < len(store):
        raise UsageError(f"--index {args.index}: out of range, the store has samples 0..{len(store) - 1}")
    ds = open_replay(args, store)
    classes = ds.adapter.classes
    num = min(args.num, store.num_augmentations)
    original = ds.source.data.load(ds.source.data.dataset_index(args.index), args.index).image
    label = int(store.labels[args.index])
    cols = min(num + 1, args.cols)
    rows = -(-(num + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.9 * rows), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(np.asarray(original), interpolation="nearest")
    label_name = classes[label] if classes is not None and label < len(classes) else str(label)
    axes.flat[0].set_title(f"original #{args.index}\nlabel {label_name}", fontsize=8)
    for j in range(num):
        x, ids, probs = ds.source.replay_record(args.index, j)
        ax = axes.flat[j + 1]
        ax.imshow(x.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"aug {j}\n{_caption(ids, probs, classes)}", fontsize=7)
    fig.suptitle(f"{m.dataset}/{m.split} sample {args.index} ({store.keys[args.index]})", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out} (original + {num} replayed augmentations of sample {args.index})")
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="draw an image and its replayed augmentations with the teacher's top-3",
                       description="Write a PNG grid: the original image and its replayed augmentations, each "
                                   "captioned with the stored teacher top-3 classes and probabilities.")
    p.add_argument("store", help="store folder (holding manifest.json)")
    add_data_arguments(p)
    p.add_argument("--index", type=int, required=True, help="sample index (in the store's order)")
    p.add_argument("--num", type=positive_int, default=8, help="number of augmentations to draw (default 8)")
    p.add_argument("--cols", type=positive_int, default=5, help="images per row (default 5)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.set_defaults(func=run)
