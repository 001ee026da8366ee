"""Tests of imagenet_plus.schema: field declarations, bit-packed ids, log-coded probabilities, identity columns."""

from __future__ import annotations

import numpy as np
import pytest

from imagenet_plus.schema import (PROB_CODE_ZERO, SAMPLE_FIELDS, Field, content_hash, decode_tail, decode_topk_ids,
                                  decode_topk_probs, encode_topk_ids, encode_topk_probs, fingerprint, id_bits,
                                  target_fields)


def test_field_json_round_trip_and_nbytes():
    f = Field("crop", "<u2", (4,), 0, 65535, "crop box")
    assert Field.from_json(f.to_json()) == f
    assert f.nbytes == 8 and Field("s", "|u1").nbytes == 1 and Field("x", "<f4", (2, 3)).nbytes == 24


@pytest.mark.parametrize("c, bits", [(1, 1), (2, 1), (10, 4), (100, 7), (102, 7), (1000, 10), (1024, 10),
                                     (1025, 11), (21843, 15)])
def test_id_bits(c, bits):
    assert id_bits(c) == bits
    assert (c - 1) < 2 ** bits


def test_target_fields_sizes():
    ids, probs = target_fields(1000, 10)
    assert (ids.name, ids.dtype, ids.shape) == ("topk_ids", "|u1", (13,))  # 10 x 10 bits
    assert (probs.name, probs.dtype, probs.shape) == ("topk_probs", "|u1", (11,))
    assert target_fields(100, 5)[0].shape == (5,)  # 35 bits


@pytest.mark.parametrize("c, k", [(2, 1), (10, 3), (100, 10), (1000, 10), (1000, 1), (21843, 5)])
def test_ids_round_trip_batched_and_single(c, k):
    rng = np.random.default_rng(c * 31 + k)
    ids = np.stack([rng.permutation(c)[:k] for _ in range(60)]).reshape(3, 4, 5, k)
    ids[0, 0, 0] = c - 1  # the largest id
    packed = encode_topk_ids(ids, c)
    assert packed.dtype == np.uint8 and packed.shape == (3, 4, 5, target_fields(c, k)[0].shape[0])
    out = decode_topk_ids(packed, c, k)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, ids)
    for idx in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        np.testing.assert_array_equal(decode_topk_ids(packed[idx], c, k), ids[idx])


def test_ids_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        encode_topk_ids(np.array([[3, 10]]), 10)
    with pytest.raises(ValueError):
        encode_topk_ids(np.array([[-1, 2]]), 10)


def test_probs_relative_precision_and_renormalisation():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((500, 1000)) * rng.choice([0.5, 2.0, 5.0, 12.0], size=(500, 1))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = -np.sort(-p, axis=1)[:, :10]
    codes = encode_topk_probs(top)
    assert codes.shape == (500, 11) and codes.dtype == np.uint8
    dec = decode_topk_probs(codes)
    assert dec.dtype == np.float32 and dec.shape == (500, 10)
    tail = decode_tail(codes)
    np.testing.assert_allclose(dec.sum(1) + tail, 1.0, atol=1e-6)
    keep = top > 1e-4
    rel = np.abs(dec[keep] / top[keep] - 1)
    assert rel.max() < 0.06  # +-2.5% per code, plus renormalisation
    # a tail below exp(-254.5 / 20) ~ 3e-6 rounds to the zero code
    np.testing.assert_allclose(tail, 1 - top.sum(1), rtol=0.06, atol=3e-6)
    assert (np.diff(dec, axis=1) <= 0).all()  # descending stays descending


def test_probs_extremes():
    codes = encode_topk_probs(np.array([[1.0, 0.0, 0.0]]))
    assert codes[0, 0] == 0 and (codes[0, 1:] == PROB_CODE_ZERO).all()
    np.testing.assert_array_equal(decode_topk_probs(codes), [[1.0, 0.0, 0.0]])
    assert decode_tail(codes)[0] == 0.0
    zero = np.full((1, 4), PROB_CODE_ZERO, np.uint8)
    assert decode_topk_probs(zero).sum() == 0 and np.isfinite(decode_topk_probs(zero)).all()
    one_code = decode_topk_probs(np.array([[0, 0, 20, 255]], np.uint8))[0]
    np.testing.assert_allclose(one_code[2] / one_code[0], np.exp(-1), rtol=1e-6)


def test_content_hash():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    h = content_hash(img)
    assert h.dtype == np.uint8 and h.shape == (8,)
    np.testing.assert_array_equal(h, content_hash(img.copy()))
    other = img.copy()
    other[4, 5, 2] ^= 1
    assert not np.array_equal(h, content_hash(other))
    assert not np.array_equal(content_hash(img.reshape(6, 5, 3)), h)  # same bytes, other size


def test_sample_fields_declare_the_identity_columns():
    assert [(f.name, f.dtype, f.shape) for f in SAMPLE_FIELDS] == [
        ("label", "<i4", ()), ("content_hash", "|u1", (8,)), ("image_size", "<u4", (2,)),
        ("fingerprint", "|u1", (64,))]


def test_fingerprint_is_the_area_averaged_luma_thumbnail():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 3 x 5 pixel boxes: a plain mean per cell
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    want = np.rint(luma.reshape(8, 3, 8, 5).mean(axis=(1, 3))).astype(np.uint8).reshape(64)
    got = fingerprint(img)
    assert got.dtype == np.uint8 and got.shape == (64,)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fingerprint(np.full((3, 5, 3), 77, np.uint8)), np.full(64, 77))  # smaller than 8


@pytest.mark.parametrize("shape", [(427, 640), (37, 53), (9, 300), (5, 7), (1, 1)])
def test_fingerprint_is_exact_for_any_size(shape):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]  # a real JPEG photo, 427 x 640
    img = np.asarray(Image.fromarray(photo).resize(shape[::-1], Image.Resampling.BICUBIC))
    h, w = shape
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    # every pixel repeated 8 x 8 times: each cell is then exactly h x w pixels of the enlarged image
    big = np.repeat(np.repeat(luma, 8, axis=0), 8, axis=1)
    want = np.rint(big.reshape(8, h, 8, w).mean(axis=(1, 3))).astype(np.uint8).reshape(64)
    np.testing.assert_array_equal(fingerprint(img), want)


def test_fingerprint_matches_pil_on_whole_boxes():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    img = load_sample_images().images[1][:424]  # 424 x 640: 53 x 80 pixel boxes, where PIL's BOX is exact
    ref = np.asarray(Image.fromarray(img).convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.int16)
    # PIL rounds the luma to 8 bits before averaging: at most one level apart
    assert np.abs(fingerprint(img).reshape(8, 8).astype(np.int16) - ref).max() <= 1


def test_fingerprint_identifies_resized_copies():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    small = np.asarray(Image.fromarray(china).resize((320, 214), Image.Resampling.LANCZOS))
    a, b = fingerprint(china).astype(int), fingerprint(small).astype(int)
    assert np.abs(a - b).mean() < 2 and np.abs(a - b).max() <= 8
    assert np.abs(a - fingerprint(flower).astype(int)).mean() > 20
    with pytest.raises(ValueError, match="RGB uint8"):
        fingerprint(china[..., 0])
    with pytest.raises(ValueError, match="RGB uint8"):
        fingerprint(china.astype(np.float32))
