"""Device decoding: workers ship file bytes, DeviceReplay decodes, crops and finishes; on the CPU equal to the CPU path.

Every test runs the device-decoding code on the CPU (``DeviceReplay(device="cpu")``, the very code that
runs on CUDA with ``device="cuda"``): byte items from real files (an ImageFolder of RGB, grey and CMYK
JPEGs and palette PNGs; ImageNet-size photos in baseline, progressive, 4:2:0/4:2:2/4:4:4 and grey
JPEGs) must give the CPU path's items bit for bit, with the files ``decode_jpeg`` does not take
(PNG, CMYK, anything it fails on) decoded by the package's own CPU decode, per image.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fakes.replay_store import write_replay_store
from fakes.torchvision_data import make_cifar100, make_imagefolder, skip_md5_checks
from imagenet_plus.adapters import create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.datasets import ReinforcedDataset
from imagenet_plus.device_decode import collate_device_items, decode_images, jpeg_header, probe
from imagenet_plus.errors import AlignmentError, ArgumentError, ImageDecodeError
from imagenet_plus.imageio import decode_bytes, to_tensor

SIZE = 32


def _folder(tmp_path, policy, classes=3, n=8):
    make_imagefolder(tmp_path / "data", classes=classes, n_per_class=n, n_val_per_class=0, seed=3)
    adapter = create_adapter("imagefolder", tmp_path / "data", "train")
    write_replay_store(tmp_path / "store", adapter, policy, num_augmentations=3)
    return adapter, tmp_path / "store"


def _pair(adapter, store, **kw):
    kw.setdefault("seed", 4)
    kw.setdefault("p_original", 0.3)
    cpu = ReinforcedDataset(adapter, store, **kw)
    dev = ReinforcedDataset(adapter, store, decode="device", **kw)
    return cpu, dev


def _kinds(adapter):
    """How many of the folder's files are JPEGs decode_jpeg takes, and how many go to the fallback."""
    jpeg = [probe(adapter.read(d), "f").jpeg for d in range(len(adapter))]
    return sum(jpeg), len(jpeg) - sum(jpeg)


@pytest.mark.parametrize("name", ["rrc+ra/re", "rrc+mix+ra/re", "rrc+mix", "cifar", "ml-dr:rrc+ra/re"])
def test_device_decoding_equals_the_cpu_path_bit_for_bit(tmp_path, name):
    flavour, _, preset = name.rpartition(":")  # the ml-dr flavour crops with PIL, on the host
    policy = create_policy(preset, output_size=SIZE, **({"flavour": flavour} if flavour else {}))
    adapter, store = _folder(tmp_path, policy)
    cpu, dev = _pair(adapter, store)
    device_files, fallback_files = _kinds(adapter)
    assert device_files > 0 and fallback_files > 0  # PNGs and CMYK JPEGs are in the folder
    replay = dev.create_device_replay("cpu")
    order = list(range(len(cpu)))[::-1]
    originals = 0
    for epoch in (0, 1):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        items = dev.__getitems__(order)
        assert all("image" not in it and it["data"].dtype == torch.uint8 for it in items)  # the file, not pixels
        for d, it in zip(order, items):  # the item carries the file itself, not pixels
            assert it["data"].numpy().tobytes() == adapter.read(d)
        batch = dev.collate_fn(items)
        x, t = replay(batch)
        images, targets = zip(*cpu.__getitems__(order))
        assert torch.equal(torch.stack(images), x), (name, epoch)
        torch.testing.assert_close(torch.stack(targets), t, rtol=0, atol=1e-6)
        originals += int(batch["is_original"].sum())
    assert 0 < originals < 2 * len(order)
    assert replay.decoded["device"] >= 2 * device_files and replay.decoded["fallback"] >= 2 * fallback_files


def test_dataloader_workers_ship_bytes_and_the_batches_match(tmp_path):
    policy = create_policy("rrc+mix+ra/re", output_size=SIZE)
    adapter, store = _folder(tmp_path, policy, n=4)
    cpu, dev = _pair(adapter, store)
    replay = dev.create_device_replay("cpu")
    loader = DataLoader(dev, batch_size=5, num_workers=1, collate_fn=dev.collate_fn)
    ref = DataLoader(cpu, batch_size=5, num_workers=0)
    for batch, (images, targets) in zip(loader, ref):
        assert batch["offsets"].shape[0] == batch["size"].shape[0] + 1 and batch["data"].ndim == 1
        x, t = replay(batch)
        assert torch.equal(images, x)
        torch.testing.assert_close(targets, t, rtol=0, atol=1e-6)


def _photo_jpegs():
    """ImageNet-size real photos as baseline/progressive JPEGs in every chroma subsampling, and grey."""
    from sklearn.datasets import load_sample_images

    out = {}
    for k, arr in enumerate(load_sample_images().images):
        im = Image.fromarray(arr).resize((484, 404) if k == 0 else (375, 500))
        for label, kw in (("420", {}), ("422", {"subsampling": 1}), ("444", {"subsampling": 0}),
                          ("progressive", {"progressive": True})):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90, **kw)
            out[f"{k}-{label}"] = buf.getvalue()
        buf = io.BytesIO()
        im.convert("L").save(buf, "JPEG", quality=85)
        out[f"{k}-grey"] = buf.getvalue()
    return out


def test_decode_jpeg_takes_every_jpeg_kind_with_pil_pixels():
    files = _photo_jpegs()
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in files.values()]
    heads = [probe(b, n) for n, b in files.items()]
    assert all(h.jpeg for h in heads)
    stats = {}
    out = decode_images(data, [True] * len(data), [(h.height, h.width) for h in heads], "cpu", list(files),
                        stats=stats)
    assert stats == {"device": len(data), "fallback": 0}  # none needed the fallback ...
    for name, b, img in zip(files, files.values(), out):
        assert torch.equal(img, to_tensor(decode_bytes(b))), name  # ... and each equals the CPU path's decode


def test_the_fallback_is_per_image(tmp_path):
    """A file decode_jpeg cannot read (forced to it here: a PNG flagged as JPEG), or one that decodes to another
    size than its header says, goes to the CPU decode alone; the rest of the batch stays on decode_jpeg."""
    files = list(_photo_jpegs().values())[:3]
    png = io.BytesIO()
    Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)).save(png, "PNG")
    files.insert(1, png.getvalue())
    files.append(png.getvalue())
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in files]
    sizes = [(probe(b, "f").height, probe(b, "f").width) for b in files]
    stats = {}
    out = decode_images(data, [True] * 5, sizes, "cpu", stats=stats)
    assert stats == {"device": 3, "fallback": 2}
    for b, img in zip(files, out):
        assert torch.equal(img, to_tensor(decode_bytes(b)))
    jpegs, jpeg_sizes = [data[0], data[2], data[3]], [sizes[0], sizes[2], sizes[3]]
    wrong = list(jpeg_sizes)
    wrong[1] = (wrong[1][0] + 1, wrong[1][1])
    stats = {}
    out = decode_images(jpegs, [True] * 3, wrong, "cpu", stats=stats)
    assert stats == {"device": 2, "fallback": 1} and torch.equal(out[1], to_tensor(decode_bytes(files[2])))
    with pytest.raises(ImageDecodeError, match="broken.jpg: cannot decode"):
        decode_images([data[0][: len(files[0]) // 3]], [True], [sizes[0]], "cpu", ["broken.jpg"])


def test_collate_packs_the_bytes_with_offsets(tmp_path):
    policy = create_policy("rrc+mix", output_size=SIZE)
    adapter, store = _folder(tmp_path, policy, n=2)
    _, dev = _pair(adapter, store, p_original=0.0)
    items = dev.__getitems__([0, 3, 5])
    batch = collate_device_items(items)
    off = batch["offsets"].tolist()
    assert off[0] == 0 and len(off) == 4
    for b, d in enumerate([0, 3, 5]):
        assert batch["data"][off[b]:off[b + 1]].numpy().tobytes() == adapter.read(d)
        assert batch["path"][b] == adapter.path(d)
        assert batch["size"][b].tolist() == [probe(adapter.read(d), "f").height, probe(adapter.read(d), "f").width]
    poff = batch["partner_offsets"].tolist()
    mixes = [poff[b + 1] > poff[b] for b in range(3)]
    for b in range(3):
        assert (batch["partner_path"][b] != "") == mixes[b]
    assert batch["params"]["crop"].shape[0] == 3 and batch["topk_ids"].dtype == torch.int64


def test_workers_check_every_file_without_decoding_it(tmp_path):
    policy = create_policy("rrc", output_size=SIZE)
    adapter, store = _folder(tmp_path, policy, n=2)
    _, dev = _pair(adapter, store, p_original=0.0)
    resized = ReinforcedDataset(adapter, store, decode="device", seed=1, p_original=0.0, check="resized")
    head = probe(adapter.read(1), "f")
    other = decode_bytes(adapter.read(4)).resize((head.width, head.height))  # another picture, sample 1's size
    buf = io.BytesIO()
    other.save(buf, "JPEG", quality=90)
    with open(adapter.path(1), "wb") as f:
        f.write(buf.getvalue())
    with pytest.raises(AlignmentError, match="its content differs from the file the store was built on"):
        dev.__getitems__([0, 1])
    with pytest.raises(AlignmentError, match="shows another picture"):  # decoded for its thumbnail
        resized.__getitems__([1])
    with open(adapter.path(1), "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="cannot read the image header"):
        dev.__getitems__([1])


def test_resized_copies_are_fingerprinted_on_the_byte_path(tmp_path):
    policy = create_policy("rrc", output_size=SIZE)
    adapter, store = _folder(tmp_path, policy, n=2)
    for d in range(len(adapter)):  # a re-encoded copy: other bytes, the same pictures
        im = decode_bytes(adapter.read(d))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=60)
        with open(adapter.path(d), "wb") as f:
            f.write(buf.getvalue())
    fresh = create_adapter("imagefolder", tmp_path / "data", "train")
    ds = ReinforcedDataset(fresh, store, decode="device", seed=1, p_original=0.0, check="resized")
    cpu = ReinforcedDataset(fresh, store, seed=1, p_original=0.0, check="resized")
    x, _ = ds.create_device_replay("cpu")(ds.collate_fn(ds.__getitems__(list(range(len(ds))))))
    assert torch.equal(x, torch.stack([im for im, _ in cpu.__getitems__(list(range(len(ds))))]))
    exact = ReinforcedDataset(fresh, store, decode="device", seed=1, p_original=0.0)
    with pytest.raises(AlignmentError, match="check='resized'"):
        exact.__getitems__([0])


def test_array_backed_datasets_keep_the_worker_crops(tmp_path):
    make_cifar100(tmp_path, n_train=6, n_test=2)
    policy = create_policy("cifar", output_size=SIZE)
    with skip_md5_checks():
        adapter = create_adapter("cifar100", tmp_path, "train")
    write_replay_store(tmp_path / "store", adapter, policy, num_augmentations=2)
    cpu, dev = _pair(adapter, tmp_path / "store")
    items = dev.__getitems__(range(6))
    assert all("image" in it and "data" not in it for it in items)
    x, t = dev.create_device_replay("cpu")(dev.collate_fn(items))
    images, targets = zip(*cpu.__getitems__(range(6)))
    assert torch.equal(torch.stack(images), x)


def test_decode_argument_is_checked(tmp_path):
    policy = create_policy("rrc", output_size=SIZE)
    adapter, store = _folder(tmp_path, policy, n=1)
    with pytest.raises(ArgumentError, match="decode"):
        ReinforcedDataset(adapter, store, decode="gpu")
    with pytest.raises(ArgumentError, match="transform/target_transform apply to the CPU path"):
        ReinforcedDataset(adapter, store, decode="device", transform=lambda x: x)
    assert ReinforcedDataset(adapter, store).decode == "workers"  # the CPU path is unchanged by default
    assert "decode='workers'" in repr(ReinforcedDataset(adapter, store))


def test_the_header_reader_agrees_with_pil_and_routes_what_decode_jpeg_cannot_take():
    files = _photo_jpegs()
    im = Image.open(io.BytesIO(files["0-420"])).convert("RGB")
    for mode in ("CMYK",):  # PIL writes an Adobe marker: PIL converts, never decode_jpeg
        buf = io.BytesIO()
        im.convert(mode).save(buf, "JPEG", quality=90)
        files[mode] = buf.getvalue()
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as ref:
            h, w, device = jpeg_header(data)
            assert (w, h) == ref.size, name
            assert device == (ref.mode in ("RGB", "L")), name
    assert jpeg_header(files["CMYK"])[2] is False
    png = io.BytesIO()
    im.save(png, "PNG")
    assert jpeg_header(png.getvalue()) is None and probe(png.getvalue(), "p.png").jpeg is False
    assert probe(png.getvalue(), "p.png").size == im.size
    assert jpeg_header(files["0-420"][:40]) is None  # cut before the frame header: PIL is asked, and refuses
    with pytest.raises(ImageDecodeError, match="cut.jpg: cannot read the image header"):
        probe(files["0-420"][:40], "cut.jpg")


def test_an_adapter_with_its_own_load_keeps_the_worker_crops(tmp_path):
    """A FileAdapter subclass that decodes its own way (here: a grey version of each file) must not have its files
    decoded by decode_jpeg: its samples are cropped in the workers, from its own load."""
    from imagenet_plus.adapters.base import LoadedSample
    from imagenet_plus.adapters.torchvision import ImageFolderAdapter
    from imagenet_plus.imageio import to_rgb_image

    class GreyFolder(ImageFolderAdapter):
        def load(self, i):
            s = super().load(i)  # an RGBArray since the lean hot path; a subclass may hand back a PIL image
            return LoadedSample(to_rgb_image(s.image).convert("L").convert("RGB"), s.label, s.digest, s.path)

    policy = create_policy("rrc", output_size=SIZE)
    make_imagefolder(tmp_path / "data", classes=3, n_per_class=2, n_val_per_class=0, seed=3)
    adapter = create_adapter("imagefolder", tmp_path / "data", "train")
    grey = GreyFolder(adapter.dataset, split="train")
    write_replay_store(tmp_path / "store", grey, policy, num_augmentations=2)
    cpu, dev = _pair(grey, tmp_path / "store")
    items = dev.__getitems__(range(len(grey)))
    assert all("image" in it and "data" not in it for it in items)
    x, _ = dev.create_device_replay("cpu")(dev.collate_fn(items))
    assert torch.equal(torch.stack([im for im, _ in cpu.__getitems__(range(len(grey)))]), x)
