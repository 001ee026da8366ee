"""ml-dr configs -> layouts, and one sample's records -> checked arrays (every variant, every refusal)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from fakes.mldr_archive import PUBLISHED, draw_sample, mldr_config
from imagenet_plus.augment import RA_OPS
from imagenet_plus.errors import ImportFormatError
from imagenet_plus.mldr import MLDR_RA_OPS, VARIANTS, decode_records, parse_config
from imagenet_plus.mldr._config import ra_magnitude_table

SIZES = [(90, 120), (200, 150), (64, 64), (300, 100)]


def _sample(name: str, index: int = 1, ns: int = 24, seed: int = 0, **kw):
    dataset, variant = PUBLISHED[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        s = draw_sample(index, variant, SIZES, ns=ns, topk=10, num_classes=parse_config(
            mldr_config(dataset, variant, ns=ns)).num_classes, rng=np.random.RandomState(seed), **kw)
    return s, parse_config(mldr_config(dataset, variant, ns=ns), "cfg")


# --- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_parse(name):
    dataset, variant = PUBLISHED[name]
    lay = parse_config(mldr_config(dataset, variant, ns=400), "c")
    assert (lay.variant, lay.dataset, lay.num_augmentations, lay.topk, lay.size) == (variant, dataset, 400, 10, 224)
    cifar = dataset == "cifar100"
    assert lay.geometry == ("pad_crop" if cifar else "rrc") and lay.padding == (16 if cifar else 0)
    assert lay.mean == ((0.507075159237, 0.4865488733149, 0.440917843367) if cifar else (0.485, 0.456, 0.406))
    # the table's order (erasing before normalize is not a parameter slot; mixing last), not the YAML's
    expected = {"rrc": ("random_resized_crop", "random_horizontal_flip"),
                "rrc+mix": ("id2", "random_resized_crop", "random_horizontal_flip", "mixup", "cutmix"),
                "rrc+ra/re": ("random_resized_crop", "random_horizontal_flip", "rand_augment", "random_erase"),
                "rrc+mix+ra/re": ("id2", "random_resized_crop", "random_horizontal_flip", "rand_augment",
                                  "random_erase", "mixup", "cutmix"),
                "cifar": ("resize", "random_crop", "random_horizontal_flip", "rand_augment", "random_erase")}
    assert lay.slots == expected[variant]
    if "mix" in variant:
        assert lay.mixup == (1.0, 0.5, 2.0) and lay.cutmix == (1.0, 0.5)
    if lay.ra_num_ops:
        assert (lay.ra_num_ops, lay.ra_magnitude, lay.ra_num_bins, lay.ra_p, lay.erase_p) == (2, 9, 31, 1.0, 0.25)


def test_yaml_order_does_not_matter_and_the_misspelled_rrc_key_is_rrc():
    cfg = mldr_config("flowers102", "rrc+ra/re", ns=8, misspelled_rrc=True)
    assert "random_resize_crop" in cfg["reinforce"]["image_augmentation"]
    lay = parse_config(cfg)
    aug = cfg["reinforce"]["image_augmentation"]
    cfg["reinforce"]["image_augmentation"] = dict(reversed(list(aug.items())))
    assert parse_config(cfg) == lay and lay.variant == "rrc+ra/re"


def test_ra_ops_and_magnitudes_match_torchvision():
    space = T.RandAugment()._augmentation_space(31, (224, 224))
    assert MLDR_RA_OPS == tuple(space) == RA_OPS
    table = ra_magnitude_table(9, 31, 224)
    for k, (mags, _) in enumerate(space.values()):
        assert table[k] == (float(mags[9].item()) if mags.ndim > 0 else 0.0)
    assert table[1] == float(np.float32(0.09)) and table[5] == 9.0 and table[10] == 7.0 and table[11] == 178.5


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["reinforce"]["image_augmentation"].update(auto_augment={}), "transform 'auto_augment'"),
    (lambda c: c["reinforce"]["image_augmentation"].update(center_crop={"size": 224}), "transform .center_crop."),
    (lambda c: c["reinforce"]["image_augmentation"].pop("normalize"), "not a published variant"),
    (lambda c: c["reinforce"]["image_augmentation"]["rand_augment"].update(enable=False), "not a published variant"),
    (lambda c: c["reinforce"].update(compress=False), "compress=False"),
    (lambda c: c["reinforce"].update(joblib=True), "joblib=True"),
    (lambda c: c.update(dataset="svhn"), "dataset 'svhn'"),
    (lambda c: c.update(num_classes=10), "num_classes 10"),
    (lambda c: c["reinforce"].update(num_samples=0), r"Invalid value 0 for config option reinforce\.num_samples\. "),
    (lambda c: c["reinforce"]["image_augmentation"]["rand_augment"].update(interpolation="bilinear"),
     r"rand_augment sets \['interpolation'\]"),
    (lambda c: c["reinforce"]["image_augmentation"]["normalize"].update(std=[0.2, 0.0, 0.1]), "positive std"),
    (lambda c: c["reinforce"]["image_augmentation"]["random_resized_crop"].update(size=[224, 200]), "square size"),
    (lambda c: c["reinforce"]["image_augmentation"]["random_resized_crop"].update(scale=[0.5, 0.1]),
     r"Invalid value \[0\.5, 0\.1\] for config option random_resized_crop\.scale\. .*low <= high"),
    (lambda c: c.pop("reinforce"), "not an ml-dr reinforcement config"),
])
def test_unknown_configs_are_refused_listing_the_known_variants(mutate, match):
    cfg = mldr_config("imagenet", "rrc+ra/re", ns=4)
    mutate(cfg)
    with pytest.raises(ImportFormatError, match=match) as e:
        parse_config(cfg, "a.tar.gz:reinforced_data/config.pth.tar")
    assert str(e.value).startswith("a.tar.gz:reinforced_data/config.pth.tar: ")
    assert "Known variants" in str(e.value) and all(v in str(e.value) for v in VARIANTS)


def test_num_augmentations_override():
    assert parse_config(mldr_config("imagenet", "rrc", ns=4), num_augmentations=7).num_augmentations == 7


# --- records ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_decode_equals_the_drawn_truth(name):
    s, lay = _sample(name)
    recs = decode_records(s.obj, "m", lay, expected_index=1, num_samples=len(SIZES))
    for k, v in s.truth.items():
        got = getattr(recs, k)
        assert got.shape == v.shape and np.array_equal(got, v.astype(got.dtype)), k
    assert recs.probs.dtype == np.float32 and (np.diff(recs.probs, axis=1) <= 0).all()
    if lay.ra_num_ops:
        assert recs.ra_op.dtype == np.int8 and recs.erase.dtype == np.int32


@pytest.mark.parametrize("resize_entry", ["int", "list", "none"])
def test_cifar_resize_entry_in_any_form(resize_entry):
    s, lay = _sample("cifar100", resize_entry=resize_entry)
    recs = decode_records(s.obj, "m", lay)
    assert np.array_equal(recs.crop, s.truth["crop"]) and (recs.crop <= 32).all()


def test_mixing_records_cover_every_case_and_carry_numpy_boxes():
    s, lay = _sample("imagenet_plus_mixing_randaug", ns=64)
    recs = decode_records(s.obj, "m", lay)
    kinds = {(bool(a), bool(b)) for a, b in zip(recs.mixup, recs.cutmix)}
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}
    assert ((recs.partner >= 0) == (recs.mixup | recs.cutmix)).all()
    boxes = [r["params"][-1] for r in s.obj[1] if r["params"][-1] is not None]
    assert all(type(v) is np.int64 for b in boxes for v in b[1:])
    assert (recs.mixup_lam[recs.mixup] <= 0.5).all()
    assert (recs.partner_ra_op[recs.partner < 0] == -1).all()


def test_targets_sorted_descending_ties_by_class_id():
    s, lay = _sample("imagenet_plus_rrc", ns=2)
    rec = s.obj[1][0]
    rec["prob"] = ([0.1, 0.3, 0.1, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05], [9, 4, 2, 7, 1, 0, 5, 3, 8, 6])
    recs = decode_records(s.obj, "m", lay)
    assert recs.ids[0].tolist() == [4, 7, 2, 9, 0, 1, 3, 5, 6, 8]
    assert np.allclose(recs.probs[0], [0.3, 0.2, 0.1, 0.1] + [0.05] * 6)


def _edit(obj, j, slot, value):
    obj = copy.deepcopy(obj)
    obj[1][j]["params"][slot] = value
    return obj


def _first(recs_obj, pred):
    return next(j for j, r in enumerate(recs_obj[1]) if pred(r["params"]))


@pytest.mark.parametrize("case,match", [
    ("float_in_crop", r"record 0: the RandomResizedCrop box .* must be 4 numbers"),
    ("bool_in_crop", r"record 0: the RandomResizedCrop box"),
    ("negative_crop", r"record 0: the crop parameters are out of range"),
    ("flip_int", r"record 0: the horizontal flip must be a bool"),
    ("bad_magnitude", r"record 0: each RandAugment pair must be an op index"),
    ("unsigned_negative", r"record \d+: each RandAugment pair"),
    ("op_15", r"record 0: each RandAugment pair"),
    ("ra_none", r"record 0: RandAugment was skipped although its p is 1"),
    ("erase_outside", r"record \d+: the erased box must lie inside the 224x224 crop"),
    ("short_params", r"record 0: params must be a list of 4 entries"),
    ("dict_params", r"record 0: 'params' must be ml-dr's compressed list"),
    ("dup_ids", r"record 0: the teacher's top-k must be distinct class ids"),
    ("class_out_of_range", r"record 0: the teacher's top-k must be distinct class ids in \[0, 1000\)"),
    ("sum_above_one", r"record 0: the teacher's top-k"),
    ("short_topk", r"record 0: the teacher's top-k probabilities must be 10 numbers"),
])
def test_bad_records_name_the_member_and_record(case, match):
    s, lay = _sample("imagenet_plus_randaug")
    obj = copy.deepcopy(s.obj)
    p0 = obj[1][0]["params"]
    if case == "float_in_crop":
        p0[0] = (1.0, 2, 3, 4)
    elif case == "bool_in_crop":
        p0[0] = (True, 2, 3, 4)
    elif case == "negative_crop":
        p0[0] = (-1, 2, 3, 4)
    elif case == "flip_int":
        p0[1] = 1
    elif case == "bad_magnitude":
        p0[2] = [(1, 0.1), (0, 0.0)]
    elif case == "unsigned_negative":
        p0[2] = [(10, -7.0), (0, 0.0)]
    elif case == "op_15":
        p0[2] = [(15, 0.0), (0, 0.0)]
    elif case == "ra_none":
        p0[2] = None
    elif case == "erase_outside":
        p0[3] = (200, 10, 30, 30)
    elif case == "short_params":
        obj[1][0]["params"] = p0[:3]
    elif case == "dict_params":
        obj[1][0]["params"] = {"random_resized_crop": (p0[0],)}
    elif case == "dup_ids":
        probs, ids = obj[1][0]["prob"]
        obj[1][0]["prob"] = (probs, [ids[0]] * 10)
    elif case == "class_out_of_range":
        probs, ids = obj[1][0]["prob"]
        obj[1][0]["prob"] = (probs, ids[:-1] + [1000])
    elif case == "sum_above_one":
        obj[1][0]["prob"] = ([0.5] * 10, list(range(10)))
    elif case == "short_topk":
        probs, ids = obj[1][0]["prob"]
        obj[1][0]["prob"] = (probs[:5], ids[:5])
    with pytest.raises(ImportFormatError, match=match) as e:
        decode_records(obj, "a.tar.gz:reinforced_data/1.pth.tar", lay)
    assert str(e.value).startswith("a.tar.gz:reinforced_data/1.pth.tar: ") and "rrc+ra/re" in str(e.value)


def test_sample_level_errors():
    s, lay = _sample("imagenet_plus_rrc", ns=3)
    with pytest.raises(ImportFormatError, match="the file name says sample 2 but the file holds sample 1"):
        decode_records(s.obj, "m", lay, expected_index=2)
    with pytest.raises(ImportFormatError, match=r"sample index 1 lies outside the dataset's \[0, 1\)"):
        decode_records(s.obj, "m", lay, num_samples=1)
    with pytest.raises(ImportFormatError, match=r"must hold 3 records \(the config's num_samples\), it holds 2"):
        decode_records((1, s.obj[1][:2]), "m", lay)
    with pytest.raises(ImportFormatError, match=r"a sample file holds \(index, records\)"):
        decode_records([1, 2, 3], "m", lay)
    with pytest.raises(ImportFormatError, match="the sample's index must be an integer"):
        decode_records(("1", s.obj[1]), "m", lay)
    with pytest.raises(ImportFormatError, match="record 1: a record is a dict with keys 'params' and 'prob'"):
        decode_records((1, [s.obj[1][0], {"params": []}, s.obj[1][2]]), "m", lay)


def test_mixing_structure_errors():
    s, lay = _sample("imagenet_plus_mixing", ns=32)
    obj = s.obj
    j_pair = _first(obj, lambda p: p[0] is not None)
    j_none = _first(obj, lambda p: p[0] is None)
    with pytest.raises(ImportFormatError, match=rf"record {j_none}: a partner index is stored exactly when"):
        decode_records(_edit(obj, j_none, 0, 2), "m", lay)
    with pytest.raises(ImportFormatError, match=rf"record {j_pair}: the random_resized_crop entry must be a pair"):
        decode_records(_edit(obj, j_pair, 1, obj[1][j_pair]["params"][1][0]), "m", lay)
    with pytest.raises(ImportFormatError, match=rf"record {j_pair}: the partner's sample index must lie in \[0, 4\)"):
        decode_records(_edit(obj, j_pair, 0, 4), "m", lay, num_samples=4)
    bad_partner = copy.deepcopy(obj)
    bad_partner[1][j_pair]["params"][1][1] = (0, 0, 0, 5)
    with pytest.raises(ImportFormatError, match=rf"record {j_pair}: partner's the crop parameters are out of range"):
        decode_records(bad_partner, "m", lay)
    j_cut = _first(obj, lambda p: p[-1] is not None)
    lam, x1, y1, x2, y2 = obj[1][j_cut]["params"][-1]
    with pytest.raises(ImportFormatError, match=rf"record {j_cut}: CutMix's lambda must be in \[0, 1\] and its box"):
        decode_records(_edit(obj, j_cut, -1, [lam, x2 + 1, y1, x2, y2]), "m", lay)
    j_mix = _first(obj, lambda p: p[-2] is not None)
    with pytest.raises(ImportFormatError, match=rf"record {j_mix}: MixUp's lambda must lie in \[0, 0\.5\]"):
        decode_records(_edit(obj, j_mix, -2, 0.7), "m", lay)


def test_cifar_offsets_and_resize_value_are_checked():
    s, lay = _sample("cifar100", ns=3)
    with pytest.raises(ImportFormatError, match=r"record 0: the crop parameters are out of range"):
        decode_records(_edit(s.obj, 0, 1, (33, 0)), "m", lay)
    with pytest.raises(ImportFormatError, match=r"record 0: the resize entry must be the output size 224"):
        decode_records(_edit(s.obj, 0, 0, 32), "m", lay)
