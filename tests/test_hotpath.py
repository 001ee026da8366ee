"""The lean CPU hot path: JPEGs decoded straight to an array, crops read from a view, erasing by slices,
RandAugment without grouping copies on the CPU; every step pixel-identical to the PIL path stores were built on."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from imagenet_plus import imageio
from imagenet_plus.augment import create_policy
from imagenet_plus.augment import ops as O
from imagenet_plus.errors import ArgumentError, ImageDecodeError
from imagenet_plus.identity import fingerprint
from imagenet_plus.imageio import RGBArray, decode_bytes, decode_rgb, image_size


def _photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    rgb = list(load_sample_images().images) + [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    return [np.asarray(Image.fromarray(a).resize((a.shape[1] * 3 // 5, a.shape[0] * 3 // 5))) for a in rgb]


PHOTOS = _photos()


def _jpeg(pixels, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _pil_pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_bytes(data, "test"))


@pytest.fixture
def fresh(monkeypatch):
    """imageio's once-per-process state reset (and restored after the test); the environment variable unset."""
    monkeypatch.setattr(imageio, "_state", {"forced": None, "trusted": None})
    monkeypatch.delenv(imageio.DECODER_ENV, raising=False)


@pytest.fixture
def calls(monkeypatch, fresh):
    """Counts the files the fast decoder decodes (the self-check's probes excluded)."""
    real = imageio._fast_decode
    seen = {"n": 0, "probing": False}

    def counting(decode, data):
        seen["n"] += 0 if seen["probing"] else 1
        return real(decode, data)

    def check(decode):
        seen["probing"] = True
        try:
            return real_check(decode)
        finally:
            seen["probing"] = False

    real_check = imageio._self_check
    monkeypatch.setattr(imageio, "_fast_decode", counting)
    monkeypatch.setattr(imageio, "_self_check", check)
    return seen


CASES = [dict(subsampling=s, progressive=p, quality=q) for s in (0, 1, 2) for p in (False, True) for q in (75, 95)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: f"sub{kw['subsampling']}-prog{int(kw['progressive'])}-q{kw['quality']}")
def test_colour_jpegs_of_real_photos_decode_fast_and_exactly_as_pil(kw, calls):
    for k, photo in enumerate(PHOTOS):
        data = _jpeg(photo[k:, 2 * k:], **kw)  # odd sizes too: partial MCUs at the edges
        got = decode_rgb(data, "photo")
        assert type(got) is RGBArray and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, _pil_pixels(data))
        assert (got.height, got.width, got.mode) == (*_pil_pixels(data).shape[:2], "RGB") == (*image_size(got), "RGB")
        assert np.array_equal(fingerprint(got), fingerprint(decode_bytes(data)))  # check="resized" sees the same
    assert calls["n"] == len(PHOTOS) and imageio.jpeg_decoder() == "simplejpeg"


@pytest.mark.parametrize("progressive", [False, True])
def test_grayscale_jpegs_decode_fast_to_replicated_rgb(progressive, calls):
    import skimage.data

    for gray in (skimage.data.camera(), np.asarray(Image.fromarray(PHOTOS[0]).convert("L"))):
        data = _jpeg(gray, quality=90, progressive=progressive)
        got = decode_rgb(data)
        np.testing.assert_array_equal(got, _pil_pixels(data))
        assert np.array_equal(got[..., 0], got[..., 2])
    assert calls["n"] == 2


def _with_adobe_marker(data: bytes) -> bytes:
    seg = b"Adobe" + bytes([0, 100, 0, 0, 0, 0, 1])  # version 100, flags 0, transform 1 (YCbCr)
    return data[:2] + b"\xff\xee" + (len(seg) + 2).to_bytes(2, "big") + seg + data[2:]


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PHOTOS[1]).convert("CMYK").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PHOTOS[2][:40, :50]).save(buf, format="PNG")
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(PHOTOS[0][:120, :200]).save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _jpeg_sampled(sub: str) -> bytes:  # Pillow's "4:1:1" is 4:2:0; simplejpeg encodes the real thing
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(PHOTOS[3][:64, :96]), quality=90, colorsubsampling=sub)


def _corrupt_but_decodable() -> bytes:
    data = _jpeg(PHOTOS[0], quality=90)
    return data[:len(data) // 2] + b"\xff\xd9"  # PIL decodes it (libjpeg recovers); simplejpeg refuses: PIL decides


FALLBACKS = {"cmyk": _cmyk_jpeg, "adobe": lambda: _with_adobe_marker(_jpeg(PHOTOS[4], quality=90)), "png": _png,
             "4:1:1": lambda: _jpeg_sampled("411"), "4:4:0": lambda: _jpeg_sampled("440"), "corrupt": _corrupt_but_decodable}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_other_files_fall_back_to_pil_exactly(name, calls):
    data = FALLBACKS[name]()
    if name in ("4:1:1", "4:4:0"):
        assert imageio._jpeg_header(data)[4][0][1:] == {"4:1:1": (4, 1), "4:4:0": (1, 2)}[name]
    got = decode_rgb(data, name)
    np.testing.assert_array_equal(got, _pil_pixels(data))
    assert type(got) is RGBArray and got.flags.writeable
    refused_by_header = name != "corrupt"
    assert calls["n"] == (0 if refused_by_header else 1)


def test_exif_rotation_is_not_applied_on_either_path(calls):
    data = _exif_rotated()
    got = decode_rgb(data)
    assert got.shape == (120, 200, 3) and calls["n"] == 1
    np.testing.assert_array_equal(got, _pil_pixels(data))


def test_truncated_jpeg_raises_as_pil_does(fresh):
    data = _jpeg(PHOTOS[0], quality=90)
    with pytest.raises(ImageDecodeError, match="cut.jpg: cannot decode"):
        decode_rgb(data[:len(data) // 2], "cut.jpg")


def test_decompression_bomb_rules_stay_pil_s(monkeypatch, calls):
    data = _jpeg(PHOTOS[0][:100, :100], quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10000 px: PIL warns (> limit), refuses over 2x
    with pytest.raises(ImageDecodeError, match="DecompressionBomb"):
        decode_rgb(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    with pytest.warns(Image.DecompressionBombWarning):
        decode_rgb(data)
    assert calls["n"] == 0


def test_a_fast_decoder_off_by_one_fails_the_self_check_and_pil_decodes_everything(monkeypatch, fresh):
    import simplejpeg

    def off_by_one(data, **kw):
        out = simplejpeg.decode_jpeg(data, **kw)
        out[0, 0, 0] ^= 1
        return out

    monkeypatch.setattr(imageio, "_simplejpeg", lambda: off_by_one)
    data = [_jpeg(p, quality=90) for p in PHOTOS[:3]]
    with pytest.warns(RuntimeWarning, match="decodes the probe JPEGs differently from PIL") as record:
        got = [decode_rgb(d) for d in data]
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1  # once per process
    for d, g in zip(data, got):
        np.testing.assert_array_equal(g, _pil_pixels(d))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_rgb(data[0])
    assert imageio.jpeg_decoder() == "pil"


def test_pil_can_be_forced_by_environment_or_function(monkeypatch, calls):
    data = _jpeg(PHOTOS[0], quality=90)
    monkeypatch.setenv(imageio.DECODER_ENV, "pil")
    np.testing.assert_array_equal(decode_rgb(data), _pil_pixels(data))
    assert calls["n"] == 0 and imageio.jpeg_decoder() == "pil"
    monkeypatch.setenv(imageio.DECODER_ENV, "auto")
    decode_rgb(data)
    assert calls["n"] == 1
    imageio.set_jpeg_decoder("pil")
    decode_rgb(data)
    assert calls["n"] == 1 and imageio.jpeg_decoder() == "pil"
    with pytest.raises(ArgumentError, match="unknown decoder 'turbo'"):
        imageio.set_jpeg_decoder("turbo")
    imageio.set_jpeg_decoder(None)  # back to the environment variable
    monkeypatch.setenv(imageio.DECODER_ENV, "fast")
    with pytest.raises(ArgumentError, match="IMAGENET_PLUS_JPEG_DECODER='fast'"):
        decode_rgb(data)


# ----------------------------------------------------------------------------- crop
def _recorded_resize_dtypes(monkeypatch) -> list:
    from torchvision.transforms.v2.functional import _geometry

    seen = []
    real = _geometry.interpolate

    def spy(x, *a, **kw):
        seen.append(x.dtype)
        return real(x, *a, **kw)

    monkeypatch.setattr(_geometry, "interpolate", spy)
    return seen


@pytest.mark.parametrize("name", ["rrc", "cifar", "rrc+ra/re", "mldr-rrc"])
def test_crops_of_the_array_equal_the_pil_crops(name, monkeypatch):
    from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

    policy = create_policy({"flavour": "ml-dr", "geometry": {"kind": "rrc"}, "mix": None}) if name == "mldr-rrc" \
        else create_policy(name)
    datas = [_jpeg(p[k:, :p.shape[1] - k], quality=90) for k, p in enumerate(PHOTOS)]
    arrays, pils = [decode_rgb(d) for d in datas], [decode_bytes(d) for d in datas]
    crops = Image.Image.crop
    if not name.startswith("mldr"):  # (the ml-dr flavour crops and resizes with PIL, as ml-dr did)
        monkeypatch.setattr(Image.Image, "crop", lambda *a: pytest.fail("PIL crop on the array path"))
    dtypes = _recorded_resize_dtypes(monkeypatch)
    array_crops = []
    for k, a in enumerate(arrays):
        for j in range(6):
            prm = policy.sample(0, k, j, a.height, a.width, num_samples=len(arrays))
            array_crops.append((k, prm, policy.crop(a, prm), policy.apply(a, prm)))
    if not name.startswith("mldr"):
        native = _do_native_uint8_resize_on_cpu(F.InterpolationMode.BILINEAR)
        assert dtypes and set(dtypes) == {torch.uint8 if native else torch.float32}
    monkeypatch.setattr(Image.Image, "crop", crops)
    for k, prm, crop, applied in array_crops:
        assert torch.equal(crop, policy.crop(pils[k], prm)) and crop.is_contiguous()
        assert torch.equal(applied, policy.apply(pils[k], prm))


# ----------------------------------------------------------------------------- finishing on the CPU
def _run(magnitude=9, num_bins=31, interpolation="nearest", fill=0, h=32, w=40):
    def run(x, code):
        op = O.RA_OPS[code // 2]
        if op == "Identity":
            return x
        m = O.ra_magnitude(op, magnitude, num_bins, h, w, bool(code % 2))
        return O.apply_ra_op(x, op, m, interpolation, fill)
    return run


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_randaugment_runs_per_record_on_the_cpu_without_grouping(interpolation, monkeypatch):
    rng = np.random.default_rng(3)
    B = 2 * len(O.RA_OPS)
    images = torch.from_numpy(np.stack([np.asarray(Image.fromarray(p).resize((40, 32))) for p in PHOTOS] * 6)[:B]
                              ).permute(0, 3, 1, 2).contiguous()
    op_ids = np.stack([np.arange(B) % len(O.RA_OPS), rng.integers(0, len(O.RA_OPS), B)], axis=1)
    negative = rng.random((B, 2)) < 0.5
    negative &= np.isin(op_ids, [O.RA_OPS.index(o) for o in O.SIGNED_OPS])
    before = images.clone()
    codes = op_ids * 2 + negative
    grouped = O._grouped(images, codes, _run(interpolation=interpolation))
    alone = [O._grouped(images[b:b + 1], codes[b:b + 1], _run(interpolation=interpolation)) for b in range(B)]
    monkeypatch.setattr(O, "_group_plans", lambda *a: pytest.fail("grouping on the CPU"))
    got = O.apply_randaugment(images, op_ids, negative, magnitude=9, num_bins=31, interpolation=interpolation, fill=0)
    assert torch.equal(got, grouped) and torch.equal(images, before)
    assert torch.equal(got, torch.cat(alone))  # and each record alone


def test_erasing_writes_slices_on_the_cpu_and_equals_the_mask(monkeypatch):
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.integers(0, 256, (9, 3, 24, 24), dtype=np.uint8))
    boxes = np.array([[0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 24, 24], [20, 20, 4, 4], [5, 0, 0, 7], [3, 3, 10, 1],
                      [0, 0, 0, 0], [23, 0, 1, 24], [2, 5, 7, 0]])
    mask = O._box_mask(torch.from_numpy(boxes), 24, 24)
    expected = images.masked_fill(mask, 17)
    before = images.clone()
    monkeypatch.setattr(O, "_box_mask", lambda *a: pytest.fail("a mask over the whole batch on the CPU"))
    got = O.erase(images, boxes, 17)
    assert torch.equal(got, expected) and torch.equal(images, before)
    assert O.erase(images, np.zeros((9, 4), np.int64), 17) is images


def test_evaluation_transforms_still_receive_pil_images(tmp_path):
    from fakes.torchvision_data import make_imagenet, skip_md5_checks
    from imagenet_plus import ImageNetPlus

    fake = make_imagenet(tmp_path / "data", 2, 1, 2)
    with skip_md5_checks():
        ds = ImageNetPlus(fake.root, split="val", transform=lambda im: im)
    image, _ = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert type(ds.adapter.load(0).image) is RGBArray


def test_datasets_rows_decode_by_the_fast_path_and_replay_the_same_items(tmp_path, monkeypatch, calls):
    import datasets

    from fakes.replay_store import write_replay_store
    from fakes.torchvision_data import make_food101
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.datasets import ReinforcedDataset
    from imagenet_plus.hf import create_transform, export_parquet

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    make_food101(tmp_path / "food", 3, 2, 1)
    adapter = create_adapter("food101", tmp_path / "food", "train")
    write_replay_store(tmp_path / "store", adapter, create_policy("rrc+ra/re", output_size=32), num_augmentations=2)
    export_parquet(tmp_path / "store", tmp_path / "store", base=adapter, images=True)
    rows = datasets.load_dataset(str(tmp_path / "store"), split="train")
    jpegs = sum(adapter.read(i)[:2] == b"\xff\xd8" for i in range(len(rows)))
    t = create_transform(tmp_path / "store", seed=2, p_original=0.0)
    x, y = t.items([rows[i] for i in range(len(rows))])
    assert jpegs > 0 and calls["n"] >= jpegs  # the rows' JPEG bytes went through the fast decoder
    imageio.set_jpeg_decoder("pil")
    rd = ReinforcedDataset(adapter, tmp_path / "store", seed=2, p_original=0.0)
    for i in range(len(rows)):
        rx, ry = rd[i]
        assert torch.equal(x[i], rx) and torch.equal(y[i], ry), i
