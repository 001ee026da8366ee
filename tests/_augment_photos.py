"""Real photos for the augmentation tests (scikit-learn and scikit-image bundled images)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def photos() -> dict[str, Image.Image]:
    """Real photos at several sizes, aspect ratios and modes (small, to keep tests fast)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    out = {
        "china": Image.fromarray(china).resize((160, 107)),
        "flower_tall": Image.fromarray(flower).resize((60, 150)),
        "astronaut": Image.fromarray(skimage.data.astronaut()).resize((96, 96)),
        "coffee_wide": Image.fromarray(skimage.data.coffee()).resize((300, 40)),
        "chelsea": Image.fromarray(skimage.data.chelsea()).resize((120, 80)),
        "camera_gray": Image.fromarray(skimage.data.camera()).resize((90, 90)),  # mode L
        "tiny": Image.fromarray(skimage.data.astronaut()).resize((8, 8)),
    }
    out["palette"] = out["chelsea"].convert("P")
    out["cmyk"] = out["china"].convert("CMYK")
    out["int16"] = Image.fromarray((np.asarray(out["camera_gray"], np.uint16) * 257).astype(np.uint16))
    return out
