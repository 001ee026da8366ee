"""Teachers (``imagenet_plus.teachers``): ensembles, strict checkpoints, fresh-head refusal, the input pipeline.

Random-init timm test models (``test_resnet``, ``test_convnext``) and safetensors checkpoints written here;
no network (timm's pretrained downloads fail offline, which the tests rely on where noted).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from imagenet_plus.errors import ArgumentError, BuildError
from imagenet_plus.teachers import TeacherSpec, create_teacher, parse_teacher_list


@pytest.fixture()
def checkpoint(tmp_path):
    """A 4-class test_resnet's weights (and the teacher they came from)."""
    torch.manual_seed(1)
    ref = create_teacher("test_resnet", num_classes=4, pretrained=False)
    path = tmp_path / "t.safetensors"
    state = {k: v.contiguous() for k, v in ref.members[0].state_dict().items()}
    save_file(state, str(path))
    return path, ref, state


def test_parse_teacher_list():
    assert parse_teacher_list("a, b") == [TeacherSpec("a"), TeacherSpec("b")]
    assert parse_teacher_list(["a", "b"], ",y.st") == [TeacherSpec("a"), TeacherSpec("b", "y.st")]
    with pytest.raises(ArgumentError, match="2 checkpoints for 3 teachers"):
        parse_teacher_list("a,b,c", "x,y")
    with pytest.raises(ArgumentError, match="no model name given"):
        parse_teacher_list(" , ")


def test_ensemble_averages_members_with_their_own_preprocessing():
    torch.manual_seed(0)
    t = create_teacher("test_resnet,test_convnext", num_classes=5, pretrained=False, input_size=40)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    p = t(x)
    assert p.shape == (3, 5) and p.dtype == torch.float32
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    members = []
    for i, m in enumerate(t.members):
        c = t.inputs[i]
        xi = F.interpolate(x.float(), size=(40, 40), mode=c.interpolation, antialias=True).clamp(0, 255)
        mean = torch.tensor(c.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(c.std).view(1, 3, 1, 1) * 255
        with torch.no_grad():
            members.append(m((xi - mean) / std).softmax(1))
    assert torch.allclose(p, (members[0] + members[1]) / 2, atol=1e-5)
    assert [c.interpolation for c in t.inputs] == ["bilinear", "bicubic"]  # timm's configs of the two models
    d = t.describe()
    assert d["models"] == ["test_resnet", "test_convnext"] and d["num_classes"] == 5
    assert d["inputs"][0] == {"input_size": 40, "input_size_source": "input_size argument",
                              "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert not t.members[0].training
    with pytest.raises(ArgumentError, match="teacher input must be uint8"):
        t(x.float())


def test_checkpoints_load_strictly_with_clear_errors(checkpoint, tmp_path):
    path, ref, state = checkpoint
    t = create_teacher([TeacherSpec("test_resnet", str(path))], num_classes=4, pretrained=True)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(t(x), ref(x))
    assert create_teacher([TeacherSpec("test_resnet", str(path))]).num_classes == 4  # from the checkpoint's head
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint .*gone.safetensors \(for 'test_resnet'\) "
                                                "does not exist"):
        create_teacher([TeacherSpec("test_resnet", str(tmp_path / "gone.safetensors"))], num_classes=4)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(BuildError, match="junk.safetensors is not a readable safetensors file"):
        create_teacher([TeacherSpec("test_resnet", str(junk))], num_classes=4)
    with pytest.raises(BuildError, match=r"t.safetensors does not match model 'test_convnext'"):
        create_teacher([TeacherSpec("test_convnext", str(path))], num_classes=4)
    with pytest.raises(BuildError, match="teacher 'no_such_net': building it failed"):
        create_teacher("no_such_net", pretrained=False)
    with pytest.raises(BuildError, match="downloading its pretrained weights failed.*--teacher-checkpoint"):
        create_teacher("test_resnet", pretrained=True)  # offline: no weights


def test_sidecar_sets_classes_and_the_input_pipeline(checkpoint):
    path, ref, _ = checkpoint
    path.with_suffix(".json").write_text(json.dumps({"model": "test_resnet", "num_classes": 4,
                                                     "input_size": [3, 48, 48], "mean": [0.4, 0.4, 0.4],
                                                     "interpolation": "bicubic"}))
    t = create_teacher([TeacherSpec("test_resnet", str(path))])
    (c,) = t.inputs
    assert (t.num_classes, c.input_size, c.source, c.interpolation) == (4, 48, "checkpoint sidecar", "bicubic")
    assert c.mean == (0.4, 0.4, 0.4) and c.std == (0.5, 0.5, 0.5)  # std from timm's config
    (m,) = t.input_pipeline(24)
    assert m == {"model": "test_resnet", "checkpoint": "t.safetensors", "input_size": 48,
                 "input_size_source": "checkpoint sidecar", "interpolation": "bicubic", "mean": [0.4, 0.4, 0.4],
                 "std": [0.5, 0.5, 0.5], "image_size": 24, "resize_factor": 2.0}
    assert create_teacher([TeacherSpec("test_resnet", str(path))], input_size=24).inputs[0].source == \
        "input_size argument"
    with pytest.raises(BuildError, match=r"was trained as 'test_resnet', not 'test_convnext'"):
        create_teacher([TeacherSpec("test_convnext", str(path))])
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(BuildError, match=r"t.json: the checkpoint's JSON sidecar is not valid JSON"):
        create_teacher([TeacherSpec("test_resnet", str(path))])


def test_a_random_init_member_input_size_is_the_architecture_default():
    (c,) = create_teacher("test_resnet", num_classes=3, pretrained=False).inputs
    assert (c.input_size, c.source, c.interpolation) == (160, "architecture default", "bilinear")  # a guess


def test_a_pretrained_head_of_another_class_count_is_refused_before_any_download():
    """timm would give resnet18's 1000-class pretrained model a fresh, random 3-class head."""
    with pytest.raises(BuildError, match=r"teacher 'resnet18': its pretrained classifier has 1000 classes, "
                                         r"num_classes is 3; timm would replace the head with a randomly "
                                         r"initialised one.*--allow-new-head"):
        create_teacher("resnet18", num_classes=3, pretrained=True)
    # allowed, it gets as far as the download (offline here), so the refusal came first
    with pytest.raises(BuildError, match="downloading its pretrained weights failed"):
        create_teacher("resnet18", num_classes=3, pretrained=True, allow_new_head=True)


def test_a_checkpoint_without_its_head_is_refused_unless_allowed(checkpoint, tmp_path):
    path, ref, state = checkpoint
    headless = tmp_path / "headless.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("fc.")}, str(headless))
    with pytest.raises(BuildError, match=r"headless.safetensors \(of 'test_resnet'\) has no weights for the "
                                         r"classifier head \(fc.bias, fc.weight\): the model's head would be "
                                         r"randomly initialised.*--allow-new-head"):
        create_teacher([TeacherSpec("test_resnet", str(headless))], num_classes=4)
    torch.manual_seed(5)
    t = create_teacher([TeacherSpec("test_resnet", str(headless))], num_classes=4, allow_new_head=True)
    got = t.members[0].state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("fc."))  # the body loaded
    assert not torch.equal(got["fc.weight"], state["fc.weight"])  # the head is fresh


def test_a_checkpoint_head_of_another_class_count_is_refused_unless_allowed(checkpoint):
    path, _, state = checkpoint
    with pytest.raises(BuildError, match=r"t.safetensors \(of 'test_resnet'\) has a classifier head for 4 classes "
                                         r"but num_classes is 7.*use a checkpoint trained on 7 classes .*, or "
                                         r"pass --allow-new-head"):
        create_teacher([TeacherSpec("test_resnet", str(path))], num_classes=7)
    t = create_teacher([TeacherSpec("test_resnet", str(path))], num_classes=7, allow_new_head=True)
    assert t.num_classes == 7 and t(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 7)
