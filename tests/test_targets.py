"""Tests of imagenet_plus.targets: densify, one_hot and the soft-target loss (against timm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.loss import SoftTargetCrossEntropy as TimmSoftTargetCrossEntropy

from imagenet_plus.errors import ReinforcementError
from imagenet_plus.targets import SoftTargetCrossEntropy, densify, one_hot, soft_target_cross_entropy


def _topk(shape, c, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(*shape, c, generator=g) * 3, -1)
    probs, ids = p.topk(k, dim=-1)
    return ids, probs, p


def test_densify_smooth_torch():
    ids, probs, _ = _topk((4, 5), 20, 3)
    d = densify(ids, probs, 20)
    assert d.shape == (4, 5, 20) and d.dtype == torch.float32
    torch.testing.assert_close(d.sum(-1), torch.ones(4, 5))
    torch.testing.assert_close(d.gather(-1, ids), probs)
    rest = (1 - probs.sum(-1)) / 17
    mask = torch.ones_like(d, dtype=torch.bool).scatter_(-1, ids, False)
    torch.testing.assert_close(d[mask].view(4, 5, 17), rest[..., None].expand(4, 5, 17))


def test_densify_example_and_numpy():
    d = densify(np.array([[2, 0]]), np.array([[0.6, 0.3]], np.float32), 4)
    assert isinstance(d, np.ndarray) and d.dtype == np.float32
    np.testing.assert_allclose(d, [[0.3, 0.05, 0.6, 0.05]], rtol=1e-6)
    ids, probs, _ = _topk((7,), 10, 4, seed=2)
    np.testing.assert_allclose(densify(ids.numpy(), probs.numpy(), 10), densify(ids, probs, 10).numpy(), rtol=1e-6)


def test_densify_none_renormalises():
    d = densify(torch.tensor([[1, 3]]), torch.tensor([[0.3, 0.1]]), 5, mode="none")
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.75, 0.0, 0.25, 0.0]]))


def test_densify_full_topk_and_errors():
    ids, probs, p = _topk((3,), 6, 6)
    torch.testing.assert_close(densify(ids, probs, 6), p)
    with pytest.raises(ReinforcementError, match="mode"):
        densify(ids, probs, 6, mode="uniform")
    with pytest.raises(ReinforcementError, match=r"\[0, 5\)"):
        densify(torch.tensor([[5]]), torch.tensor([[0.5]]), 5)
    with pytest.raises(ReinforcementError, match="differ"):
        densify(torch.tensor([[1, 2]]), torch.tensor([[0.5]]), 5)


def test_one_hot():
    np.testing.assert_array_equal(one_hot(np.array([0, 2]), 3), [[1, 0, 0], [0, 0, 1]])
    t = one_hot(torch.tensor([1]), 3)
    assert t.dtype == torch.float32 and t.tolist() == [[0, 1, 0]]
    with pytest.raises(ReinforcementError, match="labels"):
        one_hot(torch.tensor([3]), 3)


def test_loss_matches_timm():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 100, generator=g, requires_grad=True)
    ids, probs, _ = _topk((8,), 100, 10, seed=1)
    target = densify(ids, probs, 100)
    ours = SoftTargetCrossEntropy()(logits, target)
    ref = TimmSoftTargetCrossEntropy()(logits, target)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    (g1,) = torch.autograd.grad(ours, logits)
    (g2,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    none = soft_target_cross_entropy(logits, target, reduction="none")
    assert none.shape == (8,)
    torch.testing.assert_close(none.mean(), ours)
    torch.testing.assert_close(soft_target_cross_entropy(logits, target, "sum"), none.sum())
    # with a one-hot target the loss is the ordinary cross-entropy
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    torch.testing.assert_close(soft_target_cross_entropy(logits, one_hot(labels, 100)),
                               torch.nn.functional.cross_entropy(logits, labels))
    with pytest.raises(ReinforcementError, match="same shape"):
        soft_target_cross_entropy(logits, target[:, :10])
    with pytest.raises(ReinforcementError, match="reduction"):
        SoftTargetCrossEntropy(reduction="avg")


@pytest.mark.parametrize("mode", ["smooth", "none"])
@pytest.mark.parametrize("num_classes,k", [(10, 3), (1000, 10), (5, 5)])
def test_single_record_numpy_path_equals_the_batched_torch_path(num_classes, k, mode):
    """The per-sample fast path (1-D numpy) gives the batched path's values to float32 rounding."""
    rng = np.random.default_rng(num_classes + k)
    for _ in range(20):
        ids = rng.permutation(num_classes)[:k]
        probs = np.sort(rng.dirichlet(np.ones(k + 1)).astype(np.float32)[:k])[::-1].copy()
        one = densify(ids, probs, num_classes, mode=mode)
        batched = densify(torch.from_numpy(ids[None]), torch.from_numpy(probs[None]), num_classes, mode=mode)[0]
        assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (num_classes,)
        np.testing.assert_allclose(one, batched.numpy(), rtol=0, atol=1e-6)
        assert abs(float(one.sum()) - 1.0) < 1e-5
    with pytest.raises(ReinforcementError, match="class ids"):
        densify(np.array([0, num_classes]), np.array([0.5, 0.5], dtype=np.float32), num_classes)
