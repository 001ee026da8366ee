"""Policy configs: presets, validation errors, round-trips, field layout and byte budget."""

from __future__ import annotations

import json

import pytest
import yaml

from imagenet_plus.augment import PRESETS, create_policy
from imagenet_plus.errors import PolicyError
from imagenet_plus.schema import target_fields


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_config_is_complete_and_round_trips(name):
    p = create_policy(name)
    cfg = p.config
    assert json.loads(json.dumps(cfg)) == cfg
    assert create_policy(cfg) == p
    assert create_policy(yaml.safe_load(yaml.safe_dump(cfg))) == p
    assert create_policy(p) == p
    for f in p.fields:
        assert f.dtype[0] in "<|" and f.low is not None and f.high is not None


def test_preset_contents_follow_the_paper():
    ra = create_policy("rrc+ra/re").config
    assert ra["geometry"]["scale"] == [0.08, 1.0] and ra["geometry"]["ratio"] == [0.75, 4 / 3]
    assert ra["randaugment"] == {"num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31,
                                 "interpolation": "nearest", "fill": 0}
    assert ra["erasing"]["p"] == 0.25 and ra["erasing"]["value"] == 0 and ra["mix"] is None
    assert ra["hflip"] == 0.5 and ra["output_size"] == 224
    mix = create_policy("rrc+mix").config
    assert mix["mix"] == {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0}
    assert mix["randaugment"] is None and mix["erasing"] is None
    assert create_policy("cifar").config["geometry"]["padding"] == 16


def test_byte_budget():
    p = create_policy("rrc+ra/re")
    assert p.params_nbytes <= 14
    ids, probs = target_fields(1000, 10)
    assert ids.nbytes + probs.nbytes == 24
    assert p.params_nbytes + ids.nbytes + probs.nbytes <= 44
    assert create_policy("rrc").params_nbytes == 9
    big = create_policy("rrc+ra/re", output_size=320)
    assert {f.name: f.dtype for f in big.fields}["erase"] == "<u2"


def test_overrides_merge_sections():
    p = create_policy("rrc+ra/re", output_size=64, randaugment={"magnitude": 5})
    assert p.output_size == 64 and p.config["randaugment"]["num_ops"] == 2
    assert p.config["randaugment"]["magnitude"] == 5
    assert create_policy("rrc+ra/re", erasing=None).config["erasing"] is None
    custom = create_policy({"output_size": 32, "hflip": 0.0})
    assert custom.config["name"] == "custom" and custom.config["randaugment"] is None
    assert create_policy(custom.config) == custom


@pytest.mark.parametrize("bad,needle", [
    ("rrc+magic", "'name'"),
    ({"name": "rrc", "bogus": 1}, "bogus"),
    ({"name": "rrc+ra/re", "randaugment": {"num_op": 2}}, "num_op"),
    ({"name": "rrc+ra/re", "randaugment": {"magnitude": 31}}, "randaugment.magnitude"),
    ({"name": "rrc", "hflip": 1.5}, "hflip"),
    ({"name": "rrc", "geometry": {"kind": "zoom"}}, "geometry.kind"),
    ({"name": "rrc", "geometry": {"scale": [0.5, 0.1]}}, "geometry.scale"),
    ({"name": "rrc", "output_size": 4}, "output_size"),
    ({"name": "rrc", "output_size": 22.5}, "output_size"),
    ({"name": "rrc+mix", "mix": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}}, "mix"),
    ({"name": "rrc+ra/re", "erasing": {"p": -0.1}}, "erasing.p"),
    ({"name": "rrc", "mean": [0.5, 0.5]}, "mean"),
    (42, "preset name"),
])
def test_invalid_configs_raise_policy_error_naming_the_key(bad, needle):
    with pytest.raises(PolicyError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        create_policy(bad)
