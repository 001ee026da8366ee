"""Stages own their config sections; flavours are registered; one checks vocabulary; one deep merge.

A toy stage (an inversion) with its own section is registered at test time as part of a toy
flavour, and a Policy is built from a config that uses it: nothing outside this file is touched.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_plus._checks import Checks, check_int
from imagenet_plus.augment import create_policy, deep_merge
from imagenet_plus.augment.config import FLAVOURS, MERGE, POLICY, register_flavour
from imagenet_plus.augment.stages import TORCHVISION, Batch, Records, Stage
from imagenet_plus.errors import ArgumentError, ImportFormatError, PolicyError
from imagenet_plus.schema import Field

ROOT = Path(__file__).resolve().parents[1]


class Invert(Stage):
    """A toy stage: with probability ``p``, ``level - x`` (after every other photometric step)."""

    name = "invert"
    section, optional = "invert", True
    defaults = {"p": 0.5, "level": 255}
    fields = (Field("invert", "|u1", (), 0, 1, "1 = inverted"),)
    STREAM = 40

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        section["p"] = POLICY.probability(section["p"], "invert.p")
        section["level"] = POLICY.int(section["level"], "invert.level", low=1, high=255)
        return section

    def __init__(self, config: dict, size: int):
        self.config = config

    def sample(self, records: Records, out: dict) -> None:
        out["invert"] = (records.uniforms(1, self.STREAM)[:, 0] < self.config["p"]).astype(np.int64)

    def finish(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        flip = torch.from_numpy(batch.fields["invert"].reshape(-1).astype(bool)).view(-1, 1, 1, 1)
        return torch.where(flip, self.config["level"] - x, x)


@pytest.fixture
def toy():
    flavour = register_flavour("toy", (*TORCHVISION.stages, Invert))
    yield flavour
    FLAVOURS.pop("toy")


def _image(seed: int = 0, h: int = 61, w: int = 83) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def test_a_toy_stage_registered_at_test_time_builds_a_policy_from_its_config_section(toy):
    policy = create_policy({"name": "rrc+ra/re", "flavour": "toy", "output_size": 32, "invert": {"p": 1.0}})
    cfg = policy.config
    assert list(cfg) == ["name", "flavour", "output_size", "geometry", "hflip", "randaugment", "erasing", "mix",
                         "invert", "mean", "std"]
    assert cfg["invert"] == {"p": 1.0, "level": 255} and cfg["flavour"] == "toy"
    assert create_policy(cfg) == policy and type(policy.stages[-1]) is Invert
    plain = create_policy("rrc+ra/re", output_size=32)
    assert [f.name for f in policy.fields] == [f.name for f in plain.fields] + ["invert"]

    params = policy.sample(3, np.arange(6), 1, 61, 83)
    same = plain.sample(3, np.arange(6), 1, 61, 83)
    assert all(np.array_equal(params[k], same[k]) for k in same) and (params["invert"] == 1).all()
    for r in range(6):
        one = {k: v[r] for k, v in params.items()}
        out = policy.apply(_image(r), one)
        assert torch.equal(out, 255 - plain.apply(_image(r), {k: v[r] for k, v in same.items()}))
    with pytest.raises(PolicyError, match="field 'invert' has values in \\[2, 2\\]"):
        policy.check_params({**{k: v[0] for k, v in params.items()}, "invert": np.uint8(2)})
    off = create_policy({"flavour": "toy", "invert": None})
    assert off.config["invert"] is None and not any(isinstance(s, Invert) for s in off.stages)


def test_a_toy_section_is_checked_by_its_stage(toy):
    with pytest.raises(PolicyError, match=r"Invalid value 2 for policy config key 'invert\.p'\. Valid values are a "
                                          r"probability in \[0, 1\]\."):
        create_policy({"flavour": "toy", "invert": {"p": 2}})
    with pytest.raises(PolicyError, match="Unknown key 'lvl' in section 'invert' of the toy flavour"):
        create_policy({"flavour": "toy", "invert": {"lvl": 3}})
    with pytest.raises(PolicyError, match=r"Unknown key 'invert' in policy config\. Valid keys are \{name, "
                                          r"output_size, geometry, hflip, randaugment, erasing, mix, mean, std"):
        create_policy({"name": "rrc", "invert": {"p": 1.0}})  # the torchvision flavour has no such section
    with pytest.raises(PolicyError, match=r"Unknown value 'nope' for policy config key 'flavour'\. Valid values are "
                                          r"\{torchvision, ml-dr, toy\}"):
        create_policy({"flavour": "nope"})


def test_register_flavour_refuses_unusable_declarations(toy):
    with pytest.raises(PolicyError, match="flavour 'toy' is already registered"):
        register_flavour("toy", (Invert,))

    class Named(Invert):
        section = "output_size"

    class Twin(Invert):
        pass

    with pytest.raises(PolicyError, match="Named.section is 'output_size'"):
        register_flavour("bad", (Named,))
    with pytest.raises(PolicyError, match="share section 'invert'; alternatives need distinct kinds"):
        register_flavour("bad", (Invert, Twin))
    with pytest.raises(PolicyError, match=r"preset names \['rrc'\] are already registered"):
        register_flavour("bad", (Invert,), {"rrc": {}})
    assert "bad" not in FLAVOURS


def test_deep_merge_rules():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": None}
    out = deep_merge(base, {"a": {"y": [3]}, "c": {"z": 1}, "d": 4})
    assert out == {"a": {"x": 1, "y": [3]}, "b": 2, "c": {"z": 1}, "d": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": None}  # not modified
    out["a"]["y"].append(9)
    assert base["a"]["y"] == [1, 2]  # a deep copy
    seen = []

    def rule(path, old, new):
        seen.append((path, old))
        return {"replaced": True} if path == "a" else MERGE

    assert deep_merge(base, {"a": {"x": 2}, "e": 1}, rule=rule) == {**base, "a": {"replaced": True}, "e": 1}
    assert seen == [("a", {"x": 1, "y": [1, 2]}), ("e", MERGE)]

    def unknown(path, valid):
        return ArgumentError(f"{path} not in {valid}")

    assert deep_merge(base, {"a": {"x": 5}}, unknown=unknown)["a"] == {"x": 5, "y": [1, 2]}
    with pytest.raises(ArgumentError, match=r"a\.q not in \['x', 'y'\]"):
        deep_merge(base, {"a": {"q": 1}}, unknown=unknown)
    # policy configs: a section given with another kind replaces the section
    assert create_policy("cifar", geometry={"kind": "rrc"}).config["geometry"] == create_policy("rrc").config[
        "geometry"]


def test_one_checks_vocabulary_for_arguments_policies_and_files():
    with pytest.raises(ArgumentError, match=r"^Invalid value 0 for argument workers\. Valid values are an integer in "
                                            r"\[1, inf\]\.$"):
        check_int(0, "workers", low=1)
    with pytest.raises(PolicyError, match=r"^Invalid value 0\.0 for policy config key 'erasing\.scale'\. Valid values "
                                          r"are a number in \(0\.0, 1\.0\]\.$"):
        POLICY.pair([0.0, 0.5], "erasing.scale", low=0.0, high=1.0, low_open=True)
    in_file = Checks("config option", lambda message: ImportFormatError(f"a.tar: {message}"))
    with pytest.raises(ImportFormatError, match=r"^a\.tar: Invalid value nan for config option p\. "):
        in_file.number(float("nan"), "p", low=0.0, high=1.0)
    with pytest.raises(ImportFormatError, match=r"^a\.tar: Unknown key 'q' in section 'm'\. Valid keys are \{p\}\."):
        in_file.keys({"p": 1, "q": 2}, "section 'm'", ("p",))
    assert POLICY.int(np.int64(3), "n", low=0) == 3 and type(POLICY.int(np.int64(3), "n")) is int
    assert POLICY.flag(True, "f") is True and POLICY.pair((1, 2), "r") == [1.0, 2.0]


def _imports(module: Path) -> set[str]:
    """The sibling modules ``module`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return out


def test_the_augment_modules_import_one_way():
    """No circle among augment/*.py (in-function imports included): config knows no stage, stages no flavour."""
    folder = ROOT / "imagenet_plus" / "augment"
    graph = {p.stem: _imports(p) for p in folder.glob("*.py") if p.stem != "__init__"}
    assert not graph["config"] & {"stages", "mldr", "ops", "policy"}
    assert "mldr" not in graph["stages"] and "config" not in graph["ops"]

    def reach(start, node, seen):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reach(start, nxt, seen):
                    return True
        return False

    assert [m for m in graph if reach(m, m, set())] == []
