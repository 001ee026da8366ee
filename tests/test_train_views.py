"""examples/train.py with ``--records-per-decode M``: same records, steps and schedule as M=1, in epochs / M passes.

On scikit-learn's real digits with a store written from the policy's own params (no teacher run:
the targets' values do not matter for the mechanics tested here). An ``M`` run of ``--epochs E``
makes ``E / M`` passes of ``M`` views per sample, takes as many optimiser steps as the ``M=1`` run
of the same command, at the same learning rate at every step; each loader batch holds
``batch_size / M`` samples with their views (or, with ``--view-buffer``, the shuffle buffer's draws).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import train as train_script  # noqa: E402
from _recipe import load_recipe  # noqa: E402

from fakes.replay_store import write_replay_store  # noqa: E402
from imagenet_plus.errors import ArgumentError  # noqa: E402

RECIPE = EXAMPLES / "recipes" / "digits.yaml"
N_TRAIN = 96


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from imagenet_plus import create_policy
    from imagenet_plus.adapters import Digits, adapt

    policy = create_policy(load_recipe(RECIPE, "plus")["policy"])
    root = tmp_path_factory.mktemp("train-views") / "digits-plus"
    write_replay_store(root, adapt(Subset(Digits(split="train", image_size=32), range(N_TRAIN))), policy,
                       num_augmentations=4, topk=3, samples_per_shard=64, augs_per_shard=2)
    return str(root)


def _args(store, out: Path, *extra: str) -> list[str]:
    return ["--recipe", str(RECIPE), "--mode", "plus", "--out", str(out), "--no-progress", "--epochs", "4",
            "--batch-size", "16", "--workers", "0", "--reinforcements", store, "--set", f"data.train_samples={N_TRAIN}",
            "--set", "data.eval_samples=64", *extra]


def _trainer(store, *overrides):
    recipe = load_recipe(RECIPE, "plus", [("data.train_samples", N_TRAIN), ("workers", 0), ("epochs", 4),
                                          ("batch_size", 16), ("reinforcements", store), *overrides])
    return train_script.Trainer(recipe, train_script.Dist("cpu"))


def _lrs(trainer) -> list[float]:
    out = []
    for t in range(trainer.total_steps + 1):
        trainer.scheduler.step_update(num_updates=t)
        out.append(trainer.optimizer.param_groups[0]["lr"])
    return out


def test_an_m_run_takes_the_m1_runs_steps_on_its_schedule(store):
    one, two = _trainer(store), _trainer(store, ("records_per_decode", 2))
    assert (one.passes, two.passes) == (4, 2)
    assert one.steps_per_epoch == 6 and two.steps_per_epoch == 12  # a pass: M epochs' worth of steps
    assert one.total_steps == two.total_steps == 24
    assert _lrs(two) == pytest.approx(_lrs(one), rel=1e-12, abs=1e-15)  # warm-up included (1 epoch = half a pass)
    # 90 samples: 5 full batches of 16 per M=1 epoch; an M=2 pass takes 2 * 5 steps of its 11 loader batches
    odd_one, odd_two = (_trainer(store, ("data.train_samples", 90), *o) for o in ((), (("records_per_decode", 2),)))
    assert (odd_one.steps_per_epoch, odd_two.steps_per_epoch, len(odd_two.loader)) == (5, 10, 11)
    assert odd_one.total_steps == odd_two.total_steps == 20
    assert _lrs(odd_two) == pytest.approx(_lrs(odd_one), rel=1e-12, abs=1e-15)
    assert odd_two.train_epoch(0, train_step=False)["steps"] == 10
    two.set_epoch(1)
    batch = next(iter(two.batches))
    indices = list(two.sampler)[:8]  # 16 items: 8 samples, 2 views each, the views of a sample together
    expected = two.train_set.__getitems__(indices)
    assert len(batch[0]) == 16
    for b in range(16):
        assert torch.equal(batch[0][b], expected[b][0]) and torch.equal(batch[1][b], expected[b][1])


def test_the_run_logs_passes_and_steps(store, tmp_path, capsys):
    summary = train_script.main(_args(store, tmp_path / "m2", "--records-per-decode", "2"))
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    start = lines[0]
    assert start["event"] == "start" and start["records_per_decode"] == 2 and start["passes"] == 2
    assert start["total_steps"] == 24 and start["steps_per_epoch"] == 12
    assert [(h["epoch"], h["pass"], h["global_step"], h["steps"]) for h in lines[1:]] == [(2, 1, 12, 12),
                                                                                      (4, 2, 24, 12)]
    assert summary["epochs"] == 4 and summary["passes"] == 2 and summary["global_step"] == 24
    assert summary["train_seconds"] > 0
    assert lines[-1]["lr"] == pytest.approx(0.0)  # the cosine schedule ends where the M=1 run's does


def test_a_view_buffer_run_spreads_the_views_and_keeps_the_steps(store, tmp_path, capsys):
    summary = train_script.main(_args(store, tmp_path / "buf", "--records-per-decode", "4", "--view-buffer", "48"))
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert lines[0]["view_buffer"] == 48 and lines[0]["passes"] == 1
    assert summary["global_step"] == 24 and [h["steps"] for h in summary["history"]] == [24]
    trainer = _trainer(store, ("records_per_decode", 4), ("view_buffer", 48))
    trainer.set_epoch(0)
    grouped = trainer.train_set.__getitems__(list(trainer.sampler))  # the pass, views together
    spread = list(trainer.batches)
    assert len(spread) == 24 and all(len(x) == 16 for x, _ in spread)
    flat = torch.cat([x for x, _ in spread])
    assert not torch.equal(flat, torch.stack([x for x, _ in grouped]))  # re-ordered ...
    key = lambda t: t.numpy().tobytes()  # noqa: E731
    assert sorted(map(key, flat)) == sorted(key(x) for x, _ in grouped)  # ... with the same items, once each


def test_records_per_decode_mistakes_are_usage_errors(store, tmp_path, capsys):
    cases = [(("--epochs", "3", "--records-per-decode", "2"), "must be a multiple of records_per_decode=2"),
             (("--records-per-decode", "3"), "must be a multiple"),
             (("--batch-size", "18", "--records-per-decode", "4"), "must divide by the 1 rank"),
             (("--records-per-decode", "2", "--view-buffer", "8"), "must hold at least one batch"),
             (("--records-per-decode", "0"), "records_per_decode")]
    for extra, message in cases:
        assert train_script.run(_args(store, tmp_path / "bad", *extra)) in (1, 2)
        assert message in capsys.readouterr().err, extra
    erm = ["--recipe", str(RECIPE), "--mode", "erm", "--out", str(tmp_path / "erm"), "--records-per-decode", "2"]
    assert train_script.run(erm) == 2
    assert "apply to mode plus" in capsys.readouterr().err
    with pytest.raises(ArgumentError, match="multiple"):
        _trainer(store, ("records_per_decode", 3))


@pytest.mark.parametrize("extra", [(), ("--view-buffer", "32")], ids=["grouped", "spread"])
def test_an_interrupted_m_run_resumes_to_the_uninterrupted_weights_bitwise(store, tmp_path, capsys, monkeypatch,
                                                                          extra):
    """Ctrl-C in the second pass of an ``M=2`` run (after the first pass's checkpoint); rerunning the command
    resumes at pass 1 (record-epoch 2) and ends on the uninterrupted run's weights, log and step count."""
    from safetensors.torch import load_file

    argv = lambda out: _args(store, out, "--records-per-decode", "2", "--set", "p_original=0.25", *extra)  # noqa: E731
    full_summary = train_script.main(argv(tmp_path / "full"))
    real = train_script.Trainer.train_epoch

    def interrupted(self, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, **kw)

    monkeypatch.setattr(train_script.Trainer, "train_epoch", interrupted)
    killed = tmp_path / "killed"
    assert train_script.run(argv(killed)) == train_script.EXIT_INTERRUPTED
    assert (killed / "checkpoint.safetensors").is_file() and not (killed / "model.safetensors").exists()
    monkeypatch.setattr(train_script.Trainer, "train_epoch", real)
    capsys.readouterr()
    resumed = train_script.main(argv(killed))
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == {
        "event": "resume", "from_epoch": 2, "checkpoint": str(killed / "checkpoint.safetensors")}
    assert resumed["global_step"] == full_summary["global_step"] == 24 and resumed["passes"] == 2
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("epoch_seconds", "data_seconds", "images_per_s")
    strip = lambda e: {k: v for k, v in json.loads(e).items() if k not in timing}  # noqa: E731
    la, lb = ((d / "log.jsonl").read_text().splitlines() for d in (tmp_path / "full", killed))
    assert [strip(e) for e in la] == [strip(e) for e in lb] and [json.loads(e)["pass"] for e in lb] == [1, 2]
