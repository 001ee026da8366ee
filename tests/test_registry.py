"""The dataset registry (issue #16): one table, every list derived from it, a new dataset in one entry."""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imagenet_plus import registry
from imagenet_plus.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- one table, many readers
def test_the_registry_loads_without_torch():
    code = ("import sys, imagenet_plus.registry as r, imagenet_plus.hub, imagenet_plus.builder.config; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules); print(len(r.names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(registry.names()) == 7


def test_adapters_take_their_attributes_from_the_registry():
    from imagenet_plus.adapters import ADAPTERS, Digits

    assert tuple(ADAPTERS) == registry.names()
    for info in registry.infos():
        cls = ADAPTERS[info.name]
        assert cls.name == info.name and cls is registry.adapter_class(info.name)
        for attr in registry.BOUND_ATTRIBUTES:
            assert getattr(cls, attr) == getattr(info, attr), (info.name, attr)
        assert cls.train_split in cls.splits and cls.eval_split in cls.splits
    sized = {i.name: i.image_size for i in registry.infos() if i.image_size is not None}
    assert sized == {"digits": inspect.signature(Digits).parameters["image_size"].default}


def test_wrappers_and_all_agree_with_the_registry():
    import imagenet_plus
    import imagenet_plus.datasets as ds

    wrappers = {name: cls for name, cls in vars(ds).items()
                if isinstance(cls, type) and issubclass(cls, ds._PlusDataset) and cls is not ds._PlusDataset}
    assert registry.wrappers() == {name: cls._adapter.name for name, cls in wrappers.items()}
    for name, dataset in registry.wrappers().items():
        assert wrappers[name]._adapter is registry.adapter_class(dataset)
        assert name in imagenet_plus.__all__ and name in ds.__all__
    for name in imagenet_plus.__all__:
        assert getattr(imagenet_plus, name) is not None, name


def _help(parser: argparse.ArgumentParser, flag: str) -> str:
    return next(a.help for a in parser._actions if flag in a.option_strings)


def test_commands_and_scripts_offer_the_registrys_datasets(capsys):
    from builders import finetune_teacher
    from imagenet_plus.builder.cli import add_arguments
    from imagenet_plus.builder.config import BuildConfig, check_config
    from imagenet_plus.cli import build_parser

    names = registry.names()
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert all(n in _help(p, "--dataset") for n in names)
    for n in names:
        assert check_config(BuildConfig(dataset=n), "test").dataset == n
    with pytest.raises(ArgumentError, match="Unknown value 'mnist' for argument dataset"):
        check_config(BuildConfig(dataset="mnist"), "test")
    build_parser().parse_args(["verify", "s", "--dataset", "x"])  # the store's dataset is the default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["verify", "--help"])
    verify_help = capsys.readouterr().out
    assert all(n in " ".join(verify_help.split()) for n in names)
    with pytest.raises(SystemExit):
        finetune_teacher.cli(["--help"])
    assert "{" + ",".join(names) + "}" in capsys.readouterr().out


def test_recipes_and_build_configs_name_registered_datasets_and_splits():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import _recipe
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert tuple(_recipe.DATASETS) == registry.names()
    recipes = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        data = _recipe.load_recipe(path, "erm")["data"]
        info = registry.dataset_info(data["dataset"])
        assert data["train_split"] in info.splits and data["eval_split"] in info.splits, path
    for path in sorted((ROOT / "builders" / "configs").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        info = registry.dataset_info(cfg["dataset"])
        assert cfg.get("split", info.train_split) == info.train_split, path
    bad = {"data": {"dataset": "cifar100", "eval_split": "val"}, "model": {"name": "resnet18"}}
    with pytest.raises(ArgumentError, match=r"data.eval_split.*a split of cifar100: \{train, test\}"):
        _recipe.load_recipe(None, "erm", base=bad)
    good = _recipe.load_recipe(None, "erm", base={"data": {"dataset": "cifar100"}, "model": {"name": "resnet18"}})
    assert (good["data"]["train_split"], good["data"]["eval_split"]) == ("train", "test")


def test_default_repos_come_from_the_registry():
    from imagenet_plus.hub import parse_repo_spec

    for info in registry.infos():
        if info.default_repo:
            assert parse_repo_spec(info.name) == (info.default_repo, None)
    with pytest.raises(Exception, match="known dataset name"):
        parse_repo_spec("imagefolder")  # no default repo: not a repo id either


def test_image_size_belongs_to_the_datasets_that_generate_images(tmp_path):
    from imagenet_plus.adapters import create_adapter

    assert create_adapter("digits", None, "test").dataset.image_size == 32
    assert create_adapter("digits", None, "test", image_size=16).dataset.image_size == 16
    with pytest.raises(ArgumentError, match=r"image_size=32: dataset 'imagefolder' reads its images at their own size"):
        create_adapter("imagefolder", tmp_path, "train", image_size=32)
    with pytest.raises(ArgumentError, match="Unknown value 'mnist' for argument dataset"):
        create_adapter("mnist", tmp_path)


def test_a_class_that_contradicts_its_entry_is_refused():
    from imagenet_plus.adapters import ArrayAdapter

    with pytest.raises(ArgumentError, match=r"splits is \('a', 'b'\) but the registry entry of 'cifar100'"):
        type("BadCIFAR", (ArrayAdapter,), {"name": "cifar100", "splits": ("a", "b")})


# ------------------------------------------------------------------------ a new dataset: one entry, one adapter
class ToyShapes:
    """A tiny dataset: ``root/{split}/{label}_{index}.png``."""

    classes = ["dark", "light"]

    def __init__(self, root, split="train"):
        self.root = os.path.join(os.fspath(root), split)
        self.files = sorted(str(p) for p in Path(self.root).glob("*.png"))
        self.targets = [int(Path(f).name.split("_")[0]) for f in self.files]

    def __len__(self):
        return len(self.files)


def _toy_adapter():
    from imagenet_plus.adapters import FileAdapter

    class ToyShapesAdapter(FileAdapter):
        name = "toyshapes"

        @classmethod
        def create(cls, root, split="train", **kwargs):
            return cls(ToyShapes(root, split), split)

        @classmethod
        def matches(cls, dataset):
            return isinstance(dataset, ToyShapes)

        def files(self):
            return self.dataset.files

        def key_root(self):
            return self.dataset.root

        def labels(self):
            return np.asarray(self.dataset.targets, dtype=np.int64)

    return ToyShapesAdapter


@pytest.fixture
def toy(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        (tmp_path / "toy" / split).mkdir(parents=True)
        for i in range(n):
            label = i % 2
            pixels = rng.integers(0, 120, (20, 28, 3)) + 120 * label
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "toy" / split / f"{label}_{i:02d}.png")
    info = registry.register(registry.DatasetInfo("toyshapes", _toy_adapter(), "ToyShapes+", redistributable=True))
    yield tmp_path, info
    registry.unregister("toyshapes")


def test_a_dataset_added_through_the_registry_builds_replays_and_exports(toy):
    import pyarrow.parquet as pq
    import torch

    from imagenet_plus import ReinforcedDataset, adapt, create_adapter
    from imagenet_plus.builder.cli import run_build
    from imagenet_plus.builder.config import BuildConfig
    from imagenet_plus.hf.export import export_parquet
    from imagenet_plus.store import open_store, verify

    tmp, info = toy
    cfg = BuildConfig(dataset="toyshapes", data_root=str(tmp / "toy"), out=str(tmp / "toy-plus"), teacher="test_resnet",
                      pretrained=False, teacher_input_size=16, num_augmentations=3, topk=2, policy="rrc",
                      image_size=16, num_workers=0, device="cpu", batch_size=8, progress=False, seed=3)
    manifest = run_build(cfg)
    assert (manifest.dataset, manifest.split, manifest.num_samples, manifest.num_classes) == ("toyshapes", "train", 6, 2)
    assert verify(tmp / "toy-plus", full=True).ok

    base = ToyShapes(tmp / "toy", "train")
    assert type(adapt(base)).__name__ == "ToyShapesAdapter"  # the registry's match order includes it
    ds = ReinforcedDataset(base, tmp / "toy-plus", p_original=0.0, seed=0)
    x, target = ds[0]
    assert x.shape == (3, 16, 16) and target.shape == (2,) and torch.isclose(target.sum(), torch.tensor(1.0))
    store = open_store(tmp / "toy-plus")
    replay = ReinforcedDataset(create_adapter("toyshapes", tmp / "toy", "train"), store, p_original=0.0).source
    rec = store.record(4, 2)
    pixels, ids, _ = replay.replay_record(4, 2)  # replay equals build: the stored params on the decoded file
    want = replay.policy.apply(Image.open(base.files[4]).convert("RGB"), rec.params)
    assert torch.equal(pixels, want) and np.array_equal(ids, rec.topk_ids)

    files = export_parquet(store, tmp / "publish", base=base, images=True)
    table = pq.read_table(files[0])
    assert table.num_rows == 6 and table.column("key").to_pylist() == store.keys
    assert table.column("image").to_pylist()[0]["bytes"] == Path(base.files[0]).read_bytes()
