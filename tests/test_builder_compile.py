"""The teacher ensemble's forward modes (``teacher_compile``): compiled targets agree with eager, the build id does not move.

The compiled teacher uses ``torch.compile``'s ``aot_eager`` backend here (dynamo traces the whole
ensemble forward, AOTAutograd functionalises and decomposes it; about 4-8 s on two shared cores);
the default inductor backend needs a C++ build of its kernels (about 65 s cold on this machine,
6 s with a warm cache), too slow for the suite. CUDA graphs need a GPU: refused on the CPU here,
measured by ``benchmarks/build_throughput.py`` (``check_build_throughput``) where one is lent.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_builder_engine import A, K, N, S, _build, base, policy  # noqa: F401

from imagenet_plus.builder import cli as build_cli
from imagenet_plus.builder.config import BuildConfig, load_config, merge_config, resolve_teacher_compile
from imagenet_plus.builder.teacher_run import TeacherRunner
from imagenet_plus.errors import ArgumentError, BuildError
from imagenet_plus.schema import decode_topk_ids, decode_topk_probs
from imagenet_plus.store import Manifest
from imagenet_plus.teachers import COMPILE_MODES, create_teacher

C = 10


def _teacher(mode: str = "none"):
    torch.manual_seed(0)
    t = create_teacher("test_resnet", num_classes=C, pretrained=False, input_size=S)
    return t.set_compile(mode, backend="aot_eager") if mode == "compile" else t


@pytest.fixture(scope="module")
def builds(base, policy, tmp_path_factory):
    """The digits store built with the eager teacher and with the compiled one (same weights)."""
    root = tmp_path_factory.mktemp("compile")
    eager, compiled = _teacher(), _teacher("compile")
    shapes = []
    inner = compiled._compiled

    def recording(x):
        shapes.append(tuple(x.shape))
        return inner(x)

    compiled._compiled = recording
    out = {}
    for tag, t in (("eager", eager), ("compile", compiled)):
        _build(base, root / tag, policy, t, teacher_desc=t.describe())
        out[tag] = root / tag
    return out, shapes


def test_compiled_targets_agree_with_eager_and_the_build_id_does_not_move(builds):
    roots, shapes = builds
    me, mc = Manifest.load(roots["eager"]), Manifest.load(roots["compile"])
    assert me.build_id == mc.build_id and me.teacher == mc.teacher  # the mode is not part of the store's identity
    assert me.num_samples == N and me.num_augmentations == A
    for entry in me.shards:
        a, b = load_file(str(roots["eager"] / entry.file)), load_file(str(roots["compile"] / entry.file))
        for f in me.param_fields:
            assert np.array_equal(a[f.name], b[f.name])
        assert np.array_equal(decode_topk_ids(a["topk_ids"], C, K), decode_topk_ids(b["topk_ids"], C, K))
        pa, pb = decode_topk_probs(a["topk_probs"]), decode_topk_probs(b["topk_probs"])
        np.testing.assert_allclose(pa, pb, rtol=0, atol=0.02)  # one 8-bit log code step at most
    assert shapes and set(shapes) == {(5, 3, S, S)}  # every batch padded to the batch size: one compiled shape


def test_the_compiled_forward_equals_eager_within_float_rounding():
    eager, compiled = _teacher(), _teacher("compile")
    x = torch.randint(0, 256, (4, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pe, pc = eager(x), compiled(x)
    assert compiled.static_batch and not eager.static_batch and compiled.compile_mode == "compile"
    assert torch.equal(pe.topk(K).indices, pc.topk(K).indices)
    torch.testing.assert_close(pc, pe, rtol=1e-5, atol=1e-6)
    assert eager.describe() == compiled.describe()
    assert torch.equal(compiled.set_compile("none")(x), pe)  # back to eager: bit-identical


def test_a_compiled_forward_that_differs_from_eager_is_refused_on_its_first_batch():
    t = _teacher("compile")
    x = torch.randint(0, 256, (4, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    t._compiled = lambda u: torch.eye(C)[: u.shape[0]]  # one-hot rows: probabilities, but not the teacher's
    with pytest.raises(BuildError, match=r"teacher_compile compile: the teacher's \(test_resnet\) probabilities "
                                         r"for input \[4, 3, 24, 24\] differ from its eager forward's by .*; use "
                                         r"--teacher-compile none"):
        t(x)


def test_modes_are_checked_and_cudagraphs_needs_cuda():
    t = _teacher()
    assert COMPILE_MODES == ("none", "compile", "cudagraphs")
    with pytest.raises(ArgumentError, match="Unknown value 'graphs' for argument teacher_compile"):
        t.set_compile("graphs")
    with pytest.raises(ArgumentError, match=r"'cudagraphs' needs the teacher on a CUDA device, it is on cpu; "
                                            r"use teacher_compile none or compile \(--teacher-compile\)"):
        create_teacher("test_resnet", num_classes=C, pretrained=False, compile="cudagraphs")
    assert t.compile_mode == "none" and not t.static_batch


def test_a_static_batch_teacher_gets_every_batch_padded_to_the_batch_size():
    class Static:
        static_batch = True

    class Dynamic:
        static_batch = False

    args = (None, torch.device("cpu"), 64, 3, C, False)
    assert [TeacherRunner(Dynamic(), *args).padded_size(n) for n in (1, 3, 33, 64)] == [1, 4, 64, 64]
    assert [TeacherRunner(Static(), *args).padded_size(n) for n in (1, 3, 33, 64)] == [64, 64, 64, 64]


def test_teacher_compile_setting_flag_and_auto(tmp_path, monkeypatch):
    assert BuildConfig().teacher_compile == "auto"
    assert resolve_teacher_compile("auto", torch.device("cpu")) == "none"
    assert resolve_teacher_compile("auto", torch.device("cuda", 0)) == "none"  # opt-in until measured on a GPU
    assert resolve_teacher_compile("cudagraphs", torch.device("cuda", 0)) == "cudagraphs"
    assert resolve_teacher_compile("compile", torch.device("cpu")) == "compile"
    assert merge_config(BuildConfig(), {"teacher_compile": "cudagraphs"}, "x").teacher_compile == "cudagraphs"
    with pytest.raises(ArgumentError, match="x: Unknown value 'yes' for argument teacher_compile"):
        merge_config(BuildConfig(), {"teacher_compile": "yes"}, "x")
    old = tmp_path / "old.yaml"
    old.write_text("compile: true\n")
    with pytest.raises(ArgumentError, match=r"--config .*old.yaml: the setting compile was replaced by "
                                            r"teacher_compile .*write teacher_compile: compile"):
        load_config(old)
    p = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    build_cli.add_arguments(p)
    cfg = build_cli.config_from_args(p.parse_args(["--teacher-compile", "compile", "--teacher", "test_resnet"]))
    assert cfg.teacher_compile == "compile"
    seen = {}

    def fake_create(specs, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr("imagenet_plus.teachers.create_teacher", fake_create)
    with pytest.raises(RuntimeError, match="stop"):
        build_cli._create_teacher(cfg, None, torch.device("cpu"))
    assert seen["compile"] == "compile"
    seen.clear()
    with pytest.raises(RuntimeError, match="stop"):
        build_cli._create_teacher(BuildConfig(teacher="test_resnet"), None, torch.device("cpu"))
    assert seen["compile"] == "none"  # auto on the CPU
