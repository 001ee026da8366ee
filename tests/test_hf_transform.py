"""The ``datasets`` transform replays exactly what ReinforcedDataset replays: same choices, partners, epochs, workers."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fakes.replay_store import write_replay_store
from fakes.torchvision_data import make_food101
from imagenet_plus.adapters import create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.datasets import ReinforcedDataset
from imagenet_plus.errors import AlignmentError, IntegrityError
from imagenet_plus.hf import create_transform, export_parquet


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A mixing policy's store over a fake Food-101, exported with its images."""
    tmp = tmp_path_factory.mktemp("hft")
    make_food101(tmp / "food", 3, 3, 1)
    adapter = create_adapter("food101", tmp / "food", "train")
    policy = create_policy("rrc+mix+ra/re", output_size=24, mix={"prob": 1.0})
    write_replay_store(tmp / "store", adapter, policy, num_augmentations=4)
    export_parquet(tmp / "store", tmp / "store", base=adapter, images=True)
    return adapter, tmp / "store"


def _rows(folder):
    return datasets.load_dataset(str(folder), split="train")


def _decoded(row) -> Image.Image:
    return Image.open(io.BytesIO(row["image"]["bytes"]))


def test_defaults_match_the_dataset():
    import inspect

    from imagenet_plus.datasets import ReinforcedDataset as RD

    t = inspect.signature(create_transform).parameters
    d = inspect.signature(RD).parameters
    for name in ("p_original", "densify", "sampling"):
        assert t[name].default == d[name].default, name


@pytest.mark.parametrize("sampling", ["random", "cycle"])
def test_items_equal_reinforced_dataset_items_with_partners_and_originals(mixed, sampling):
    adapter, folder = mixed
    rows = _rows(folder)
    rd = ReinforcedDataset(adapter, folder, seed=11, p_original=0.25, sampling=sampling)
    t = create_transform(folder, seed=11, p_original=0.25, sampling=sampling, partners=rows)
    mixes = originals = 0
    for epoch in range(4):
        rd.set_epoch(epoch)
        t.set_epoch(epoch)
        x, y = t.items([rows[i] for i in range(len(rows))])
        for i in range(len(rows)):
            original, j = rd.choose(i)
            assert t.choose(i) == (original, j)
            rx, ry = rd[i]
            assert torch.equal(x[i], rx) and torch.equal(y[i], ry), (epoch, i)
            originals += original
            mixes += (not original) and int(rd.source.store.params(i, j)["mix_kind"]) != 0
    assert originals > 0 and mixes > 5


def test_set_epoch_reaches_persistent_workers(mixed):
    adapter, folder = mixed
    rows = _rows(folder)
    t = create_transform(folder, seed=2, partners=rows)
    ds = rows.with_transform(t)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    rd = ReinforcedDataset(adapter, folder, seed=2)
    for epoch in range(3):
        t.set_epoch(epoch)
        rd.set_epoch(epoch)
        got = torch.cat([b["pixel_values"] for b in loader])
        want = torch.stack([x for x, _ in rd.__getitems__(list(range(len(rd))))])
        assert torch.equal(got, want), epoch


def test_a_row_with_another_picture_is_refused(mixed):
    adapter, folder = mixed
    rows = _rows(folder)
    t = create_transform(folder, seed=0, partners=rows)
    row = dict(rows[0])
    row["image"] = _decoded(rows[3]).resize(_decoded(rows[0]).size)  # a decoded picture: checked as check="resized"
    with pytest.raises(AlignmentError, match=r"row 0 .*another picture"):
        t.item(row)


# -- the `datasets` path as strict as the store path (issue 17) ---------------------------------------------
@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Two stores (seeds 1 and 2) over one fake Food-101 whose sample 0 is a JPEG with an EXIF orientation tag
    (rotate 90: datasets' decoder would turn 40x24 into 24x40), each exported with its images."""
    tmp = tmp_path_factory.mktemp("hfs")
    make_food101(tmp / "food", 3, 2, 1)
    path = create_adapter("food101", tmp / "food", "train").path(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).convert("RGB").resize((40, 24)).save(path, "JPEG", quality=90, exif=exif.tobytes())
    adapter = create_adapter("food101", tmp / "food", "train")
    policy = create_policy("rrc+ra/re", output_size=24)
    for name, seed in (("a", 1), ("b", 2)):
        write_replay_store(tmp / name, adapter, policy, num_augmentations=3, seed=seed)
        export_parquet(tmp / name, tmp / name, base=adapter, images=True)
    return adapter, tmp / "a", tmp / "b"


def _cell(row, image: Image.Image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return {"bytes": buf.getvalue(), "path": row["image"]["path"]}


def test_an_exif_rotated_jpeg_replays_as_on_the_store_path(plain):
    adapter, folder, _ = plain
    rows = _rows(folder)
    assert _decoded(rows[0]).getexif().get(0x0112) == 6 and _decoded(rows[0]).size == (40, 24)
    rd = ReinforcedDataset(adapter, folder, seed=3, p_original=0.2)
    t = create_transform(folder, seed=3, p_original=0.2)
    for epoch in range(3):
        rd.set_epoch(epoch)
        t.set_epoch(epoch)
        x, y = t.items([rows[i] for i in range(len(rows))])
        for i in range(len(rows)):
            rx, ry = rd[i]
            assert torch.equal(x[i], rx) and torch.equal(y[i], ry), (epoch, i)
    assert torch.equal(rows.with_transform(t)[0]["pixel_values"], x[0])  # through with_transform too


def test_rows_of_another_store_are_refused(plain):
    _, folder_a, folder_b = plain
    rows_b = _rows(folder_b)
    t = create_transform(folder_a, seed=0)
    with pytest.raises(IntegrityError, match=rf"row 0 .*{folder_a}.*checksum .*another store"):
        t.items([rows_b[0]])
    with pytest.raises(IntegrityError, match="checksum"):
        rows_b.with_transform(create_transform(folder_a, seed=0))[1]
    assert create_transform(folder_b, seed=0).items([rows_b[0]])[0].shape == (1, 3, 24, 24)


@pytest.mark.parametrize("column", ["topk_probs", "topk_ids", "crop"])
def test_an_edited_record_is_refused(plain, column):
    _, folder, _ = plain
    rows = _rows(folder)
    row = dict(rows[1])
    value = [list(v) for v in row[column]]
    if column == "topk_probs":
        value[0][0] = value[0][0] + 0.01
    elif column == "topk_ids":
        value[0][0], value[0][1] = value[0][1], value[0][0]  # the top two classes swapped: valid, wrong
    else:
        value[0][0] = value[0][0] ^ 1  # another valid crop
    row[column] = value
    with pytest.raises(IntegrityError, match=r"row 1 .*checksum .* edited"):
        create_transform(folder, seed=0).replay(row, 0)
    assert create_transform(folder, seed=0).replay(dict(rows[1]), 0)["pixel_values"].shape == (3, 24, 24)


@pytest.mark.parametrize("edit", ["grayscale", "patch"])
def test_a_changed_row_image_is_refused_under_exact(plain, edit):
    _, folder, _ = plain
    rows = _rows(folder)
    row = dict(rows[2])
    image = _decoded(row).convert("RGB")
    if edit == "grayscale":
        image = image.convert("L")
    else:
        image.paste((0, 0, 0), (2, 2, 6, 6))  # a 4x4 patch: the 8x8 thumbnail barely moves
    row["image"] = _cell(row, image)
    t = create_transform(folder, seed=0)
    with pytest.raises(AlignmentError, match=r"row 2 .*content differs"):
        t.item(row)
    create_transform(folder, seed=0, check="resized").item(row)  # what the thumbnail alone would let through
    with pytest.raises(AlignmentError, match="check='exact' compares the row's file bytes"):
        create_transform(folder, seed=0, check="exact").item(dict(rows[2], image=image))


def _silently_flipped(parquet: Path, column: str) -> bytes:
    """The file's bytes with one byte flipped inside ``column``'s pages such that pyarrow still reads it, with
    other values (a silent change without the rows' checksums)."""
    import pyarrow.parquet as pq

    data = parquet.read_bytes()
    want = pq.read_table(parquet).column(column).to_pylist()
    meta = pq.ParquetFile(parquet).metadata.row_group(0)
    chunk = meta.column([meta.column(c).path_in_schema.split(".")[0] for c in range(meta.num_columns)].index(column))
    start = chunk.data_page_offset
    for pos in range(start + chunk.total_compressed_size - 1, start, -1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        try:
            got = pq.read_table(io.BytesIO(bytes(flipped))).column(column).to_pylist()
        except Exception:  # noqa: BLE001 - a flip pyarrow detects is not the case under test
            continue
        if got != want:
            return bytes(flipped)
    raise AssertionError(f"no silent flip found in {column} of {parquet}")


def test_a_flipped_byte_in_the_parquet_is_caught(plain, tmp_path, capsys):
    import shutil

    from imagenet_plus.cli import main

    _, folder, _ = plain
    copy = tmp_path / "store"
    shutil.copytree(folder, copy)
    assert main(["verify", str(copy), "--full"]) == 0
    assert "the Parquet export: 1 file(s) read with page checksums, 6 row checksum(s)" in capsys.readouterr().out
    parquet = next((copy / "data").glob("*.parquet"))
    parquet.write_bytes(_silently_flipped(parquet, "topk_probs"))
    rows = _rows(copy)
    with pytest.raises(IntegrityError, match="checksum"):
        create_transform(copy, seed=0).items([rows[i] for i in range(len(rows))])
    assert main(["verify", str(copy), "--full"]) == 1
    assert "parquet" in capsys.readouterr().err


def test_verify_parquet_names_edited_rows_and_swapped_images(plain, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagenet_plus.hf import verify_parquet
    from imagenet_plus.store import open_store

    _, folder, _ = plain
    copy = tmp_path / "store"
    shutil.copytree(folder, copy)
    identity = open_store(copy, check_files=False)
    assert verify_parquet(copy, identity)["problems"] == []
    parquet = next((copy / "data").glob("*.parquet"))
    table = pq.read_table(parquet)
    probs = table.column("topk_probs").to_pylist()
    probs[4][0][0] += 0.25  # an edited target, its checksum kept
    images = table.column("image").to_pylist()
    images[1], images[2] = dict(images[1], bytes=images[2]["bytes"]), dict(images[2], bytes=images[1]["bytes"])
    table = table.set_column(table.column_names.index("topk_probs"), "topk_probs",
                             pa.array(probs, type=table.schema.field("topk_probs").type))
    table = table.set_column(table.column_names.index("image"), "image",
                             pa.array(images, type=table.schema.field("image").type))
    pq.write_table(table, parquet)
    got = verify_parquet(copy, identity)
    assert got["rows_checked"] == 6 and got["images_checked"] == 6
    assert any("1 row(s) fail their checksum" in p and "samples [4]" in p for p in got["problems"]), got
    assert any("image bytes of 2 row(s)" in p and "samples [1, 2]" in p for p in got["problems"]), got
