"""Every documented mode conversion of ``imagenet_plus.imageio``, checked against hand-computed pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_plus.errors import PolicyError
from imagenet_plus.imageio import SUPPORTED_MODES, to_rgb_array, to_rgb_image, to_tensor

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (5, 7), dtype=np.uint8)


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.rint(rgb.astype(np.float64) * alpha[..., None] / 255.0).astype(np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def test_rgb_is_returned_unchanged():
    img = Image.fromarray(RGB)
    assert to_rgb_image(img) is img
    np.testing.assert_array_equal(to_rgb_array(img), RGB)


def test_l_replicates_gray():
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(GRAY, "L")), _gray3(GRAY))


def test_bilevel_maps_to_0_and_255():
    bits = GRAY > 127
    img = Image.fromarray(bits)
    assert img.mode == "1"
    np.testing.assert_array_equal(to_rgb_array(img), _gray3(np.where(bits, 255, 0).astype(np.uint8)))


def test_palette_uses_palette_colours():
    img = Image.fromarray(RGB).quantize(colors=8)
    assert img.mode == "P"
    palette = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(to_rgb_array(img), palette[np.asarray(img)])


def test_palette_with_transparency_is_composited_over_black():
    img = Image.fromarray(RGB).quantize(colors=8)
    idx = np.asarray(img)
    transparent = int(idx[0, 0])
    img.info["transparency"] = transparent
    palette = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
    expected = palette[idx].copy()
    expected[idx == transparent] = 0
    np.testing.assert_array_equal(to_rgb_array(img), expected)


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBA"])
def test_alpha_modes_are_composited_over_black(mode):
    if mode == "LA":
        img = Image.fromarray(np.stack([GRAY, ALPHA], -1), "LA")
        colour = _gray3(GRAY)
    elif mode == "RGBA":
        img = Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1), "RGBA")
        colour = RGB
    else:
        p = Image.fromarray(RGB).quantize(colors=8)
        palette = np.asarray(p.getpalette(), dtype=np.uint8).reshape(-1, 3)
        colour = palette[np.asarray(p)]
        img = p.convert("PA")
        img.putalpha(Image.fromarray(ALPHA, "L"))
    assert img.mode == mode
    np.testing.assert_array_equal(to_rgb_array(img), _over_black(colour, ALPHA))


def test_alpha_255_keeps_colour_and_0_gives_black():
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 255, np.uint8)], -1)
    rgba[0, :, 3] = 0
    out = to_rgb_array(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(out[1:], RGB[1:])
    assert not out[0].any()


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr"])
def test_cmyk_and_ycbcr_convert_like_pil(mode):
    img = Image.fromarray(RGB).convert(mode)
    out = to_rgb_array(img)
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))
    assert np.abs(out.astype(int) - RGB).max() <= (0 if mode == "CMYK" else 4)


def test_cmyk_jpeg_decodes_to_rgb():
    buf = io.BytesIO()
    Image.fromarray(RGB).convert("CMYK").save(buf, "JPEG", quality=95)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.mode == "CMYK"
    out = to_rgb_array(img)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - RGB).mean() < 20


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_modes_keep_the_high_byte(mode):
    values = RNG.integers(0, 65536, (5, 7)).astype(np.uint16)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (7, 5), values.astype(dtype).tobytes())
    assert img.mode == mode
    np.testing.assert_array_equal(to_rgb_array(img), _gray3((values >> 8).astype(np.uint8)))


def test_16_bit_png_round_trip():
    values = RNG.integers(0, 65536, (5, 7)).astype(np.uint16)
    buf = io.BytesIO()
    Image.frombytes("I;16", (7, 5), values.astype("<u2").tobytes()).save(buf, "PNG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.mode in ("I;16", "I")
    np.testing.assert_array_equal(to_rgb_array(img), _gray3((values >> 8).astype(np.uint8)))


def test_32_bit_integer_mode_is_clipped_then_shifted():
    values = RNG.integers(-1000, 70000, (5, 7)).astype(np.int32)
    values[0, 0], values[0, 1] = -5, 1 << 20
    img = Image.fromarray(values, "I")
    assert img.mode == "I"
    expected = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    out = to_rgb_array(img)
    np.testing.assert_array_equal(out, _gray3(expected))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_float_mode_is_clipped_and_rounded():
    values = RNG.uniform(-50, 300, (5, 7)).astype(np.float32)
    values[0, 0], values[0, 1], values[0, 2] = np.nan, 254.6, 0.4
    img = Image.fromarray(values, "F")
    assert img.mode == "F"
    out = to_rgb_array(img)[..., 0]
    expected = np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert (out[0, 0], out[0, 1], out[0, 2]) == (0, 255, 0)


@pytest.mark.parametrize("mode", ["LAB", "HSV", "RGBa", "La"])
def test_other_modes_raise_policy_error_naming_the_mode(mode):
    img = Image.new(mode, (3, 2))
    with pytest.raises(PolicyError, match=f"'{mode}'"):
        to_rgb_image(img)


def test_supported_modes_all_convert():
    for mode in SUPPORTED_MODES:
        out = to_rgb_array(Image.new(mode, (3, 2)))
        assert out.shape == (2, 3, 3) and out.dtype == np.uint8, mode


def test_arrays_and_tensors():
    np.testing.assert_array_equal(to_rgb_array(RGB), RGB)
    np.testing.assert_array_equal(to_rgb_array(GRAY), _gray3(GRAY))
    np.testing.assert_array_equal(to_rgb_array(GRAY[..., None]), _gray3(GRAY))
    rgba = np.concatenate([RGB, ALPHA[..., None]], -1)
    np.testing.assert_array_equal(to_rgb_array(rgba), _over_black(RGB, ALPHA))
    chw = torch.from_numpy(RGB).permute(2, 0, 1)
    np.testing.assert_array_equal(to_rgb_array(chw), RGB)
    with pytest.raises(PolicyError, match="float32"):
        to_rgb_image(RGB.astype(np.float32))
    with pytest.raises(PolicyError, match=r"\(5, 7, 2\)"):
        to_rgb_image(np.zeros((5, 7, 2), np.uint8))
    with pytest.raises(PolicyError, match="str"):
        to_rgb_image("image.jpg")


def test_to_tensor_layout_and_contiguity():
    t = to_tensor(Image.fromarray(RGB))
    assert t.dtype == torch.uint8 and t.shape == (3, 5, 7) and t.is_contiguous()
    np.testing.assert_array_equal(t.permute(1, 2, 0).numpy(), RGB)
    arr = to_rgb_array(Image.fromarray(GRAY, "L"))
    assert arr.flags["C_CONTIGUOUS"]
