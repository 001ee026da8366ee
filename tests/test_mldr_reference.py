"""The independent reference of ml-dr's replay, checked against torchvision's own transform classes
(given the same parameters) and hand computation, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from fakes.mldr_archive import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, draw_erase, draw_randaugment
from fakes.mldr_reference import OPS, erase, geometry, randaugment, replay, single


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {"china": Image.fromarray(china), "flower_small": Image.fromarray(flower).resize((213, 160)),
            "astronaut": Image.fromarray(skimage.data.astronaut()).resize((256, 256)),
            "coffee_tall": Image.fromarray(skimage.data.coffee()).resize((150, 330)),
            "chelsea": Image.fromarray(skimage.data.chelsea())}


class _FixedRRC(T.RandomResizedCrop):
    def __init__(self, box):
        super().__init__(224)
        self.box = box

    def get_params(self, img, scale, ratio):  # test-only: torchvision's class with a given box
        return self.box


class _FixedCrop(T.RandomCrop):
    def __init__(self, top_left):
        super().__init__(224, padding=16)
        self.top_left = top_left

    def get_params(self, img, output_size):
        return (*self.top_left, 224, 224)


def _boxes(img, n, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]


def _crops(photos, n=3):
    return [geometry(img, b, "rrc") for k, img in enumerate(photos.values()) for b in _boxes(img, n, k)]


def test_loader_float_then_uint8_truncation_is_lossless(photos):
    """ml-dr's teacher pipeline: ToTensor in the loader, (x * 255).to(uint8) after collation == the pixels."""
    values = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    for img in (values, *photos.values()):
        assert torch.equal((F.to_tensor(img) * 255).to(torch.uint8), F.pil_to_tensor(img))


def test_rrc_box_is_top_left_height_width_in_source_pixels(photos):
    for k, img in enumerate(photos.values()):
        for top, left, h, w in _boxes(img, 4, k):
            ref = np.asarray(geometry(img, (top, left, h, w), "rrc"))
            assert np.array_equal(ref, np.asarray(_FixedRRC((top, left, h, w))(img)))
            by_hand = img.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
            assert np.array_equal(ref, np.asarray(by_hand))


def test_cifar_geometry_is_resize_then_padded_crop():
    import skimage.data

    img = Image.fromarray(skimage.data.astronaut()).resize((32, 32), Image.BILINEAR)
    for top, left in [(0, 0), (32, 32), (5, 17), (16, 3)]:
        ref = np.asarray(geometry(img, (top, left), "pad_crop"))
        classes = T.Compose([T.Resize(224), _FixedCrop((top, left))])
        assert np.array_equal(ref, np.asarray(classes(img)))
        padded = ImageOps.expand(img.resize((224, 224), Image.BILINEAR), border=16, fill=0)
        assert np.array_equal(ref, np.asarray(padded.crop((left, top, left + 224, top + 224))))


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_randaugment_replay_equals_torchvision_randaugment(photos, backend):
    """Same RNG calls: the fake's drawn (op, magnitude) pairs replayed == T.RandAugment(2, 9) itself."""
    crops = _crops(photos, 2)
    seen = set()
    for seed in range(60):
        c = crops[seed % len(crops)]
        x = c if backend == "pil" else F.pil_to_tensor(c)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pairs = draw_randaugment()
            torch.manual_seed(seed)
            expected = T.RandAugment(num_ops=2, magnitude=9)(x)
        got = randaugment(x, pairs)
        seen.update(OPS[op] for op, _ in pairs)
        if backend == "pil":
            assert np.array_equal(np.asarray(got), np.asarray(expected))
        else:
            assert torch.equal(got, expected)
    assert len(seen) >= 12


def test_erasing_box_is_top_left_height_width(photos):
    """The replayed box means rows top:top+h, columns left:left+w: torchvision's ``F.erase`` convention."""
    x = F.to_tensor(_crops(photos, 1)[0])
    for box in [(0, 0, 10, 224), (100, 3, 50, 7), (223, 223, 1, 1), (0, 0, 224, 224)]:
        assert torch.equal(erase(x.clone(), box), F.erase(x.clone(), *box, torch.zeros(3, 1, 1)))


def test_fake_draws_erasing_boxes_like_mldr(photos):
    """ml-dr calls get_params without a value (random fill drawn before the position): the fake's box is
    the region torchvision's own RandomErasing(value="random") overwrites under the same seed."""
    for seed, c in enumerate(_crops(photos, 2)):
        x = F.to_tensor(c)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            top, left, h, w = draw_erase(p=1.0)
            torch.manual_seed(seed)
            changed = (T.RandomErasing(p=1.0, value="random")(x.clone()) != x).any(dim=0)
        rows, cols = torch.nonzero(changed.any(dim=1)).flatten(), torch.nonzero(changed.any(dim=0)).flatten()
        assert (int(rows[0]), int(cols[0]), int(rows[-1]) - int(rows[0]) + 1, int(cols[-1]) - int(cols[0]) + 1) \
            == (top, left, h, w)


def test_fallback_box_erases_everything_to_black():
    """ml-dr writes zeros even for torchvision's 10-failures fallback box (torchvision would leave the image)."""
    img = Image.fromarray(np.full((300, 300, 3), 200, np.uint8))
    out = single(img, {"crop": (0, 0, 300, 300), "flip": False, "erase": (0, 0, 224, 224)}, kind="rrc",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
    expected = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out, expected.view(3, 1, 1).expand(3, 224, 224), atol=1e-6)


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_single_chain_equals_torchvision_classes_in_mldr_order(photos, backend):
    """crop -> flip -> RandAugment -> ToTensor -> erasing (zeros) -> Normalize, as torchvision's classes."""
    for seed, (name, img) in enumerate(photos.items()):
        box = _boxes(img, 1, 100 + seed)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pairs = draw_randaugment()
            torch.rand(1)  # the class's draws for the box it will erase (value 0: no random fill drawn)
            ebox = T.RandomErasing.get_params(torch.empty(3, 224, 224), (0.02, 0.33), (0.3, 3.3), [0.0])[:4]
            x = T.RandomHorizontalFlip(p=1.0)(_FixedRRC(box)(img))  # (draws a number of its own)
            torch.manual_seed(seed)
            if backend == "tensor":
                x = T.RandAugment()(F.pil_to_tensor(x)).float() / 255.0
            else:
                x = T.ToTensor()(T.RandAugment()(x))
            expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.RandomErasing(p=1.0, value=0)(x))
        got = single(img, {"crop": box, "flip": True, "ra": pairs, "erase": ebox}, kind="rrc", mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, backend=backend)
        assert torch.equal(got, expected), name


def test_mixup_then_cutmix_on_normalised_images_by_hand(photos):
    imgs = list(photos.values())
    p1 = {"crop": _boxes(imgs[0], 1, 1)[0], "flip": False, "erase": (10, 20, 30, 40)}
    p2 = {"crop": _boxes(imgs[1], 1, 2)[0], "flip": True}
    kw = dict(kind="rrc", mean=CIFAR_MEAN, std=CIFAR_STD)
    a = single(imgs[0], dict(p1), **kw).numpy().astype(np.float64)
    b = single(imgs[1], dict(p2), **kw).numpy().astype(np.float64)
    lam = 0.3141592653589793
    mixed = replay(imgs[0], dict(p1), partner_image=imgs[1], partner_params=dict(p2), mixup_lam=lam, **kw)
    assert np.allclose(mixed.numpy(), lam * a + (1 - lam) * b, atol=1e-6)
    box = (np.int64(50), np.int64(0), np.int64(170), np.int64(100))  # rows 50:170, columns 0:100
    both = replay(imgs[0], dict(p1), partner_image=imgs[1], partner_params=dict(p2), mixup_lam=lam, cutmix_box=box,
                  **kw).numpy()
    expected = lam * a + (1 - lam) * b
    expected[:, 50:170, 0:100] = b[:, 50:170, 0:100]
    assert np.allclose(both, expected, atol=1e-6)
    assert np.array_equal(both[:, 50:170, :100], b[:, 50:170, :100].astype(np.float32))
    cut = replay(imgs[0], dict(p1), partner_image=imgs[1], partner_params=dict(p2), cutmix_box=box, **kw).numpy()
    assert np.array_equal(cut[:, :50], a[:, :50].astype(np.float32))


def test_teacher_and_student_pipelines_differ_only_inside_randaugment(photos):
    """Measured facts the importer's docs state: without RandAugment ml-dr's two pipelines agree exactly;
    with it, PIL and tensor kernels differ by at most one level except Rotate (nearest-sampling edges)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    img = photos["china"]
    for box in _boxes(img, 5, 7):
        p = {"crop": box, "flip": True, "erase": (3, 4, 50, 60)}
        assert torch.equal(single(img, p, kind="rrc", mean=mean, std=std, backend="pil"),
                           single(img, p, kind="rrc", mean=mean, std=std, backend="tensor"))
    from imagenet_plus.mldr._config import ra_magnitude_table

    table = ra_magnitude_table(9, 31, 224)
    crops = _crops(photos, 2)
    for k, op in enumerate(OPS):
        for c in crops:
            for sign in (1.0, -1.0) if 1 <= k <= 9 else (1.0,):
                pil = np.asarray(randaugment(c, [(k, sign * table[k])])).astype(int)
                ten = randaugment(F.pil_to_tensor(c), [(k, sign * table[k])]).permute(1, 2, 0).numpy().astype(int)
                d = np.abs(pil - ten)
                if op == "Rotate":
                    assert (d > 0).mean() < 0.005, op
                else:
                    assert d.max() <= 1, op
                if op in ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness", "Posterize",
                          "Solarize", "Equalize"):
                    assert d.max() == 0, op


def test_pil_crops_match_tensor_resize_only_with_antialias(photos):
    """The antialias decision, measured: ml-dr crops PIL images (always antialiased); a tensor resize
    reproduces them within one level only with antialias=True."""
    for k, img in enumerate(photos.values()):
        t = F.pil_to_tensor(img)
        for box in _boxes(img, 3, 50 + k):
            ref = F.pil_to_tensor(geometry(img, box, "rrc")).int()
            on = F.resized_crop(t, *box, [224, 224], InterpolationMode.BILINEAR, antialias=True).int()
            assert (ref - on).abs().max() <= 1
        big = max(_boxes(img, 20, 60 + k), key=lambda b: b[2] * b[3])
        if big[2] > 2 * 224 and big[3] > 2 * 224:  # a strong downscale: aliasing shows without antialias
            ref = F.pil_to_tensor(geometry(img, big, "rrc")).int()
            off = F.resized_crop(t, *big, [224, 224], InterpolationMode.BILINEAR, antialias=False).int()
            assert (ref - off).abs().max() > 8
