"""The evaluation transform: resize 256, centre crop 224, normalise (hard labels, no replay)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..errors import PolicyError
from .config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["create_eval_transform"]


class _ToRGB(torch.nn.Module):
    def forward(self, img):
        from ..imageio import to_rgb_image

        return img if isinstance(img, torch.Tensor) else to_rgb_image(img)


def create_eval_transform(output_size: int = 224, resize_size: int = 256, *, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, interpolation: str = "bilinear") -> v2.Compose:
    """The standard ImageNet evaluation transform (torchvision v2, tensor backend).

    Args:
        output_size: centre-crop side (224).
        resize_size: the shorter side is resized to this first (256).
        mean: normalisation mean (ImageNet's).
        std: normalisation std (ImageNet's).
        interpolation: "bilinear" or "bicubic" (antialiased).

    Returns:
        a callable: PIL image (any mode :func:`imagenet_plus.imageio.to_rgb_image` converts)
        or uint8 ``[3, H, W]`` tensor -> float32 ``[3, output_size, output_size]``.
    """
    if not isinstance(output_size, int) or not isinstance(resize_size, int) or not 1 <= output_size <= resize_size:
        raise PolicyError(f"create_eval_transform: need integers 1 <= output_size <= resize_size, got "
                          f"output_size={output_size!r}, resize_size={resize_size!r}")
    if interpolation not in ("bilinear", "bicubic"):
        raise PolicyError(f"create_eval_transform: interpolation {interpolation!r} is not one of "
                          "{bilinear, bicubic}")
    return v2.Compose([
        _ToRGB(),
        v2.ToImage(),
        v2.Resize(resize_size, interpolation=v2.InterpolationMode(interpolation), antialias=True),
        v2.CenterCrop(output_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])
