"""Sample identity: digests, fingerprints, and the exact/resized checks, on real photos."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fakes.torchvision_data import photo_crops
from imagenet_plus.errors import AlignmentError, ArgumentError
from imagenet_plus.identity import FINGERPRINT_TOLERANCE, IdentityChecker, digest_bytes, fingerprint
from imagenet_plus.imageio import decode_bytes


def _photos():
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = [Image.fromarray(a) for a in load_sample_images().images]
    out += [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea",
                                                                             "rocket", "camera", "coins")]
    out += photo_crops(24, seed=5, min_size=120, max_size=300)
    return out


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(fingerprint(a).astype(int) - fingerprint(b).astype(int)).mean())


def test_fingerprint_is_an_area_average_of_luma():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    luma = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float64)  # PIL's ITU-R 601 luma
    want = luma.reshape(8, 8, 8, 12).mean(axis=(1, 3))  # exact 8x12 blocks
    np.testing.assert_allclose(fingerprint(Image.fromarray(arr)).reshape(8, 8), want, atol=1.0)


def test_resized_and_reencoded_copies_stay_within_tolerance_other_photos_do_not():
    photos = _photos()
    same, other = [], []
    for k, p in enumerate(photos):
        src = decode_bytes(_jpeg(p), "src")
        for scale, q in ((0.5, 75), (0.3, 50), (0.75, 30), (1.0, 20)):
            size = (max(16, round(p.width * scale)), max(16, round(p.height * scale)))
            copy = decode_bytes(_jpeg(src.resize(size, Image.BICUBIC), q), "copy")
            same.append(_diff(src, copy))
        other += [_diff(src, decode_bytes(_jpeg(photos[m]), "other")) for m in range(len(photos)) if m != k]
    assert max(same) < FINGERPRINT_TOLERANCE / 2, max(same)  # measured margin, not just under the bar
    assert np.quantile(other, 0.01) > FINGERPRINT_TOLERANCE, sorted(other)[:5]


def _store(images, digests, root="store"):
    return SimpleNamespace(content_hashes=np.stack(digests), image_sizes=np.array([[i.height, i.width] for i in images]),
                           fingerprints=np.stack([fingerprint(i) for i in images]), root=root)


def test_exact_check_compares_digest_and_size():
    a, b = photo_crops(2, seed=3, min_size=40, max_size=60)
    da, db = _jpeg(a), _jpeg(b)
    store = _store([decode_bytes(da, "a"), decode_bytes(db, "b")], [digest_bytes(da), digest_bytes(db)])
    checker = IdentityChecker(store, "exact")
    assert checker.problem(0, decode_bytes(da, "a"), digest_bytes(da)) is None
    assert "content differs" in checker.problem(0, decode_bytes(db, "b"), digest_bytes(db))  # swapped file
    reenc = _jpeg(decode_bytes(da, "a"), 60)
    assert "content differs" in checker.problem(0, decode_bytes(reenc, "r"), digest_bytes(reenc))
    with pytest.raises(AlignmentError, match=r"sample 0 \(x\): its content differs.*check='resized'.*verify"):
        checker.check(0, decode_bytes(db, "b"), digest_bytes(db), "sample 0 (x)")
    # equal digest but another decoded size: a store recorded with another image size
    store.image_sizes[0] = [1, 1]
    assert "decodes to" in checker.problem(0, decode_bytes(da, "a"), digest_bytes(da))


def test_resized_check_accepts_copies_and_rejects_other_pictures_and_aspect_ratios():
    a, b = photo_crops(2, seed=4, min_size=150, max_size=220)
    store = _store([a, b], [np.zeros(8, np.uint8)] * 2)
    half = decode_bytes(_jpeg(a.resize((a.width // 2, a.height // 2)), 70), "half")
    assert IdentityChecker(store, "resized").problem(0, half, digest_bytes(b"")) is None
    assert "another picture" in IdentityChecker(store, "resized").problem(0, b.resize(a.size), digest_bytes(b""))
    squashed = a.resize((a.width, a.height // 2))
    assert "aspect ratio" in IdentityChecker(store, "resized").problem(0, squashed, digest_bytes(b""))
    # the aspect ratio and the thumbnail are checked on every decode: a file swapped after its first decode
    # fails; a decode of the very bytes already checked (equal digest) reuses the verdict
    checker = IdentityChecker(store, "resized")
    db, da = digest_bytes(_jpeg(b)), digest_bytes(_jpeg(a.resize(b.size)))
    assert checker.problem(1, b, db) is None and checker.problem(1, b, db) is None
    assert "another picture" in checker.problem(1, a.resize(b.size), da)
    assert checker.problem(1, b, db) is None
    assert "aspect ratio" in checker.problem(1, b.resize((b.width, b.height // 2)), db)
    with pytest.raises(ArgumentError, match="Unknown value 'fast' for argument check"):
        IdentityChecker(store, "fast")


def test_resized_check_catches_files_swapped_between_epochs_under_persistent_workers(tmp_path):
    """Two same-size pictures swapped on disk after epoch 0: a persistent worker's next decode must fail."""
    from torch.utils.data import DataLoader

    from fakes.replay_store import write_replay_store
    from imagenet_plus import create_policy
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.datasets import ReinforcedDataset

    images = photo_crops(4, seed=11, min_size=40, max_size=40)
    files = []
    for k, image in enumerate(images):
        f = tmp_path / "data" / f"c{k % 2}" / f"{k}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(_jpeg(image))
        files.append(f)
    assert _diff(decode_bytes(files[0].read_bytes(), "0"), decode_bytes(files[1].read_bytes(), "1")) > \
        FINGERPRINT_TOLERANCE  # two different pictures of the same size
    base = create_adapter("imagefolder", tmp_path / "data", "train")
    write_replay_store(tmp_path / "store", base, create_policy("rrc", output_size=16), num_augmentations=2,
                       topk=2)
    ds = ReinforcedDataset(base, tmp_path / "store", check="resized", seed=0, p_original=0.0)
    loader = DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True)
    ds.set_epoch(0)
    assert sum(len(x) for x, _ in loader) == 4
    one, two = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(two)
    files[1].write_bytes(one)
    ds.set_epoch(1)
    with pytest.raises(AlignmentError, match=r"another picture than the store's image"):
        for _ in loader:
            pass
