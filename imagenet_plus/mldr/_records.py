"""ml-dr's per-sample records, decoded into checked numpy arrays.

Each sample file holds ``(index, [{"params": p, "prob": (probs, ids)}] * NS)`` where ``p`` is
ml-dr's *compressed* parameter list (``docs/ml-dr-format.md``): for mixing variants first the
partner's sample index (``None`` when neither MixUp nor CutMix applied), then one entry per
transform with random parameters, in the order of ml-dr's transform table; when a partner
exists each of these entries is a pair ``[own, partner's]`` (MixUp and CutMix excepted).
:func:`decode_sample` turns one sample file into :class:`SampleRecords` given the archive's
:class:`~imagenet_plus.mldr._config.Layout`; it is a plain function of picklable values, so
decoding can run in worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImportFormatError, short_repr as _short
from ._config import MLDR_RA_OPS, SIGNED_OPS, Layout
from ._unpickle import load_torch_file

__all__ = ["SampleRecords", "decode_records", "decode_sample", "decode_member"]


@dataclass
class SampleRecords:
    """One sample's NS records as numpy arrays (row ``j`` = augmentation ``j``, in stored order).

    Geometry: ``crop`` int32 ``[NS, 4]`` (top, left, height, width) of the RandomResizedCrop box
    in source pixels; for ``cifar`` ``[NS, 2]`` (top, left) of the 224 crop in the image resized
    to 224 and padded by 16 on each side. ``flip`` bool ``[NS]``.
    RandAugment: ``ra_op`` int8 ``[NS, num_ops]`` (index into :data:`MLDR_RA_OPS`, -1 where
    RandAugment was skipped) and ``ra_magnitude`` float64 (signed, exactly as stored).
    Erasing: ``erase`` int32 ``[NS, 4]`` (top, left, height, width) in output pixels, all zero
    where nothing was erased. Fields of features the variant lacks are None.
    Mixing: ``partner`` int64 ``[NS]`` (the partner's sample index, -1 where neither MixUp nor
    CutMix applied); ``mixup`` bool, ``mixup_lam`` float64 (the own image's weight);
    ``cutmix`` bool, ``cutmix_lam`` float64 (the Beta draw), ``cutmix_box`` int32 ``[NS, 4]``
    (top, left, height, width) pasted from the partner; the partner's own ``partner_crop``,
    ``partner_flip``, ``partner_ra_op``, ``partner_ra_magnitude``, ``partner_erase``
    (meaningful where ``partner >= 0``; elsewhere zeros, and -1 for ``partner_ra_op``).
    Teacher: ``probs`` float32 ``[NS, K]`` sorted descending (ties by class id), ``ids`` int32.
    """

    index: int
    crop: np.ndarray
    flip: np.ndarray
    probs: np.ndarray
    ids: np.ndarray
    ra_op: np.ndarray | None = None
    ra_magnitude: np.ndarray | None = None
    erase: np.ndarray | None = None
    partner: np.ndarray | None = None
    mixup: np.ndarray | None = None
    mixup_lam: np.ndarray | None = None
    cutmix: np.ndarray | None = None
    cutmix_lam: np.ndarray | None = None
    cutmix_box: np.ndarray | None = None
    partner_crop: np.ndarray | None = None
    partner_flip: np.ndarray | None = None
    partner_ra_op: np.ndarray | None = None
    partner_ra_magnitude: np.ndarray | None = None
    partner_erase: np.ndarray | None = None



# ----------------------------------------------------------------------------- records
_INT_TYPES = frozenset({int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64})
_REAL_TYPES = _INT_TYPES | {float, np.float16, np.float32, np.float64}
_BOOL_TYPES = frozenset({bool, np.bool_})


class _Ctx:
    """Where entries come from, for error messages: the member, the layout, record rows, whose params."""

    def __init__(self, member: str, layout: Layout, rows: np.ndarray | None = None, whose: str = ""):
        self.member, self.layout, self.rows, self.whose = member, layout, rows, whose

    def sub(self, idx: np.ndarray, whose: str | None = None) -> "_Ctx":
        """The context of ``entries[idx]`` (``idx``: positions in this context's entries)."""
        rows = idx if self.rows is None else self.rows[idx]
        return _Ctx(self.member, self.layout, rows, self.whose if whose is None else whose)

    def error(self, j: int | None, what: str, value: Any = None) -> ImportFormatError:
        if j is not None and self.rows is not None:
            j = int(self.rows[j])
        where = f"record {j}: " if j is not None else ""
        got = "" if value is None else f" (got {_short(value)})"
        return ImportFormatError(f"{self.member}: {where}{self.whose}{what}{got}. The sample does not match the "
                                 f"'{self.layout.variant}' layout that {self.layout.config_member} describes; the "
                                 f"file is corrupt or from another archive: re-download the archive.")


def _first_bad(ok: np.ndarray) -> int:
    return int(np.argmin(ok.reshape(len(ok), -1).all(axis=1)))


def _numbers(entries: list, width: int, types: frozenset, ctx: _Ctx, what: str, dtype) -> np.ndarray:
    """``entries`` (each a sequence of ``width`` numbers of ``types``) -> ``dtype [n, width]``."""
    for j, e in enumerate(entries):
        if not isinstance(e, (list, tuple)) or len(e) != width or not set(map(type, e)) <= types:
            raise ctx.error(j, f"{what} must be {width} numbers of types {sorted(t.__name__ for t in types)}", e)
    return np.array(entries, dtype=dtype).reshape(len(entries), width)


def _present(entries: list, ctx: _Ctx) -> tuple[np.ndarray, list, _Ctx]:
    present = np.array([e is not None for e in entries], dtype=bool)
    return present, [e for e in entries if e is not None], ctx.sub(np.flatnonzero(present))


def _fill(present: np.ndarray, values: np.ndarray, width: int, dtype, empty=0) -> np.ndarray:
    out = np.full((len(present), width), empty, dtype=dtype)
    out[present] = values
    return out


def _decode_crop(entries: list, ctx: _Ctx) -> np.ndarray:
    lay = ctx.layout
    if lay.geometry == "rrc":
        a = _numbers(entries, 4, _INT_TYPES, ctx, "the RandomResizedCrop box (top, left, height, width)", np.int64)
        ok = (a[:, :2] >= 0).all(axis=1) & (a[:, 2:] >= 1).all(axis=1) & (a < 2 ** 31).all(axis=1)
    else:
        a = _numbers(entries, 2, _INT_TYPES, ctx, "the random crop's (top, left)", np.int64)
        ok = ((a >= 0) & (a <= 2 * lay.padding)).all(axis=1)
    if not ok.all():
        j = _first_bad(ok)
        raise ctx.error(j, "the crop parameters are out of range", entries[j])
    return a.astype(np.int32)


def _decode_resize(entries: list, ctx: _Ctx) -> None:
    S = ctx.layout.size
    for j, e in enumerate(entries):
        v = list(e) if isinstance(e, (list, tuple)) else [e]
        if not (1 <= len(v) <= 2 and all(type(x) in _INT_TYPES and x == S for x in v)):
            raise ctx.error(j, f"the resize entry must be the output size {S}", e)


def _decode_flip(entries: list, ctx: _Ctx) -> np.ndarray:
    for j, e in enumerate(entries):
        if type(e) not in _BOOL_TYPES:
            raise ctx.error(j, "the horizontal flip must be a bool", e)
    return np.array(entries, dtype=bool)


def _decode_ra(entries: list, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    lay = ctx.layout
    R = lay.ra_num_ops
    present, given, gctx = _present(entries, ctx)
    if lay.ra_p >= 1.0 and not present.all():
        raise ctx.error(_first_bad(present), "RandAugment was skipped although its p is 1", None)
    for j, e in enumerate(given):
        if not isinstance(e, (list, tuple)) or len(e) != R or not all(
                isinstance(q, (list, tuple)) and len(q) == 2 and set(map(type, q)) <= _REAL_TYPES for q in e):
            raise gctx.error(j, f"RandAugment params must be {R} (op index, magnitude) pairs", e)
    a = np.array(given, dtype=np.float64).reshape(len(given), R, 2)
    ops, mags = a[..., 0], a[..., 1]
    ok = (ops == np.round(ops)) & (ops >= 0) & (ops < len(MLDR_RA_OPS))
    op_i = np.where(ok, ops, 0).astype(np.int64)
    expected = np.asarray(lay.ra_table, dtype=np.float64)[op_i]
    ok &= (mags == expected) | (np.isin(op_i, list(SIGNED_OPS)) & (mags == -expected))
    if not ok.all():
        j = _first_bad(ok)
        raise gctx.error(j, f"each RandAugment pair must be an op index in [0, 14) and that op's magnitude at bin "
                            f"{lay.ra_magnitude} of {lay.ra_num_bins} (negated only for signed ops; unsigned "
                            f"magnitudes {[round(x, 4) for x in lay.ra_table]})", given[j])
    return _fill(present, op_i.astype(np.int8), R, np.int8, -1), _fill(present, mags, R, np.float64, 0.0)


def _decode_erase(entries: list, ctx: _Ctx) -> np.ndarray:
    S = ctx.layout.size
    present, given, gctx = _present(entries, ctx)
    a = _numbers(given, 4, _INT_TYPES, gctx, "the erased box (top, left, height, width)", np.int64)
    ok = (a[:, :2] >= 0).all(axis=1) & (a[:, 2:] >= 1).all(axis=1) & (a[:, 0] + a[:, 2] <= S) \
        & (a[:, 1] + a[:, 3] <= S)
    if not ok.all():
        j = _first_bad(ok)
        raise gctx.error(j, f"the erased box must lie inside the {S}x{S} crop", given[j])
    return _fill(present, a.astype(np.int32), 4, np.int32)


def _decode_mixup(entries: list, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    present, given, gctx = _present(entries, ctx)
    lam = _numbers([[v] for v in given], 1, _REAL_TYPES, gctx, "MixUp's lambda", np.float64)[:, 0]
    hi = 1.0 / ctx.layout.mixup[2]
    ok = (lam >= 0) & (lam <= hi)
    if not ok.all():
        j = _first_bad(ok)
        raise gctx.error(j, f"MixUp's lambda must lie in [0, {hi}] (a Beta draw divided by div_by)", given[j])
    return present, _fill(present, lam[:, None], 1, np.float64, 0.0)[:, 0]


def _decode_cutmix(entries: list, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    S = ctx.layout.size
    present, given, gctx = _present(entries, ctx)
    for j, e in enumerate(given):
        if not isinstance(e, (list, tuple)) or len(e) != 5 or type(e[0]) not in _REAL_TYPES:
            raise gctx.error(j, "CutMix params must be [lambda, x1, y1, x2, y2]", e)
    lam = np.array([e[0] for e in given], dtype=np.float64)
    box = _numbers([list(e[1:]) for e in given], 4, _INT_TYPES, gctx, "CutMix's box (x1, y1, x2, y2)", np.int64)
    ok = (lam >= 0) & (lam <= 1) & (box >= 0).all(axis=1) & (box[:, 0] <= box[:, 2]) & (box[:, 1] <= box[:, 3]) \
        & (box[:, 2] <= S) & (box[:, 3] <= S)
    if not ok.all():
        j = _first_bad(ok)
        raise gctx.error(j, f"CutMix's lambda must be in [0, 1] and its box rows x1 <= x2 <= {S}, columns "
                            f"y1 <= y2 <= {S}", given[j])
    tlhw = np.stack([box[:, 0], box[:, 1], box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], axis=1)
    return present, _fill(present, lam[:, None], 1, np.float64, 0.0)[:, 0], _fill(present, tlhw, 4, np.int32)


def _decode_partner(entries: list, ctx: _Ctx, num_samples: int | None) -> np.ndarray:
    present, given, gctx = _present(entries, ctx)
    ids = _numbers([[v] for v in given], 1, _INT_TYPES, gctx, "the partner's sample index", np.int64)[:, 0]
    hi = num_samples if num_samples is not None else 2 ** 62
    ok = (ids >= 0) & (ids < hi)
    if not ok.all():
        j = _first_bad(ok)
        raise gctx.error(j, f"the partner's sample index must lie in [0, {hi}) (the dataset's size)", given[j])
    return _fill(present, ids[:, None], 1, np.int64, -1)[:, 0]


def _decode_targets(probs_ids: list, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    lay = ctx.layout
    K = lay.topk
    probs, ids = [], []
    for j, pi in enumerate(probs_ids):
        if not isinstance(pi, (list, tuple)) or len(pi) != 2:
            raise ctx.error(j, f"'prob' must be (probabilities, class ids), {K} each", pi)
        probs.append(pi[0])
        ids.append(pi[1])
    p = _numbers(probs, K, _REAL_TYPES, ctx, "the teacher's top-k probabilities", np.float64)
    c = _numbers(ids, K, _INT_TYPES, ctx, "the teacher's top-k class ids", np.int64)
    srt = np.sort(c, axis=1)
    ok = np.isfinite(p).all(axis=1) & (p >= 0).all(axis=1) & (p <= 1).all(axis=1) & (p.sum(axis=1) <= 1 + 1e-3) \
        & (c >= 0).all(axis=1) & (c < lay.num_classes).all(axis=1) & (np.diff(srt, axis=1) > 0).all(axis=1)
    if not ok.all():
        j = _first_bad(ok)
        raise ctx.error(j, f"the teacher's top-k must be distinct class ids in [0, {lay.num_classes}) with "
                           f"probabilities in [0, 1] summing to at most 1", probs_ids[j])
    order = np.lexsort((c, -p), axis=1)
    return (np.take_along_axis(p, order, axis=1).astype(np.float32),
            np.take_along_axis(c, order, axis=1).astype(np.int32))


def _slots_for(params: list, ctx: _Ctx) -> tuple:
    full = ctx.layout.slots
    # The CIFAR run's Resize entry cannot come from the published code (see the docs): accept the
    # list with it (an int or [size] equal to the output size) or without it.
    candidates = (full, tuple(s for s in full if s != "resize"))
    lengths = {len(p) for p in params}
    for cand in candidates:
        if lengths == {len(cand)}:
            return cand
    j = next(j for j, p in enumerate(params) if len(p) != len(full))
    raise ctx.error(j, f"params must be a list of {len(full)} entries {list(full)}", params[j])


def _split_pairs(entries: list, has: np.ndarray, ctx: _Ctx, name: str) -> tuple[list, list]:
    own, partner = list(entries), []
    for j in np.flatnonzero(has):
        e = entries[j]
        if not isinstance(e, (list, tuple)) or len(e) != 2:
            raise ctx.error(int(j), f"the {name} entry must be a pair [own, partner's] (the record mixes with a "
                                    f"partner)", e)
        own[j] = e[0]
        partner.append(e[1])
    return own, partner


def _spread(has: np.ndarray, values: np.ndarray, empty=0) -> np.ndarray:
    out = np.full((len(has),) + values.shape[1:], empty, dtype=values.dtype)
    out[has] = values
    return out


def _decode_params(cols: dict, ctx: _Ctx, has: np.ndarray) -> dict:
    """The per-transform entries (own and, where ``has``, the partner's) -> SampleRecords fields."""
    out = {}
    pctx = ctx.sub(np.flatnonzero(has), "partner's ")
    for name, entries in cols.items():
        if name in ("id2", "mixup", "cutmix"):
            continue
        own, part = _split_pairs(entries, has, ctx, name)
        for prefix, vals, c in (("", own, ctx), ("partner_", part, pctx)):
            if prefix and not ctx.layout.mixing:
                continue
            spread = (lambda a: a) if not prefix else (lambda a: _spread(has, a))
            if name in ("random_resized_crop", "random_crop"):
                out[prefix + "crop"] = spread(_decode_crop(vals, c))
            elif name == "resize":
                _decode_resize(vals, c)
            elif name == "random_horizontal_flip":
                out[prefix + "flip"] = spread(_decode_flip(vals, c))
            elif name == "rand_augment":
                ops, mags = _decode_ra(vals, c)
                out[prefix + "ra_op"] = _spread(has, ops, -1) if prefix else ops
                out[prefix + "ra_magnitude"] = spread(mags)
            elif name == "random_erase":
                out[prefix + "erase"] = spread(_decode_erase(vals, c))
    return out


def decode_records(obj: Any, member: str, layout: Layout, *, expected_index: int | None = None,
                   num_samples: int | None = None) -> SampleRecords:
    """Check one unpickled sample file ``(index, records)`` and convert it to arrays.

    Args:
        obj: what the sample file holds.
        member: its archive member name (named in errors).
        layout: the archive's layout (:func:`parse_config`).
        expected_index: the index the member's file name states.
        num_samples: the user's dataset size N; the sample's and partners' indices must lie in ``[0, N)``.

    Returns:
        The sample's records.

    Raises:
        ImportFormatError: naming the member, the record and the value that does not fit.
    """
    ctx = _Ctx(member, layout)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ctx.error(None, "a sample file holds (index, records)", obj)
    index, records = obj
    if type(index) not in _INT_TYPES:
        raise ctx.error(None, "the sample's index must be an integer", index)
    index = int(index)
    if expected_index is not None and index != expected_index:
        raise ctx.error(None, f"the file name says sample {expected_index} but the file holds sample {index}")
    if num_samples is not None and not 0 <= index < num_samples:
        raise ctx.error(None, f"sample index {index} lies outside the dataset's [0, {num_samples})")
    ns = layout.num_augmentations
    if not isinstance(records, list) or len(records) != ns:
        n = len(records) if isinstance(records, list) else type(records).__name__
        raise ctx.error(None, f"the sample must hold {ns} records (the config's num_samples), it holds {n}")
    params, prob = [], []
    for j, r in enumerate(records):
        if not isinstance(r, dict) or set(r) != {"params", "prob"}:
            raise ctx.error(j, "a record is a dict with keys 'params' and 'prob'", r)
        if not isinstance(r["params"], list):
            raise ctx.error(j, "'params' must be ml-dr's compressed list (reinforce.compress=true)", r["params"])
        params.append(r["params"])
        prob.append(r["prob"])
    slots = _slots_for(params, ctx)
    cols = {name: [p[k] for p in params] for k, name in enumerate(slots)}
    probs, ids = _decode_targets(prob, ctx)
    fields: dict[str, Any] = {}
    has = np.zeros(ns, dtype=bool)
    if layout.mixing:
        partner = _decode_partner(cols["id2"], ctx, num_samples)
        has = partner >= 0
        applied = np.zeros(ns, dtype=bool)
        fields["partner"] = partner
        if layout.mixup is not None:
            fields["mixup"], fields["mixup_lam"] = _decode_mixup(cols["mixup"], ctx)
            applied |= fields["mixup"]
        if layout.cutmix is not None:
            fields["cutmix"], fields["cutmix_lam"], fields["cutmix_box"] = _decode_cutmix(cols["cutmix"], ctx)
            applied |= fields["cutmix"]
        if not np.array_equal(applied, has):
            j = int(np.argmax(applied != has))
            raise ctx.error(j, "a partner index is stored exactly when MixUp or CutMix applied", params[j])
    fields.update(_decode_params(cols, ctx, has))
    return SampleRecords(index=index, probs=probs, ids=ids, **fields)


def decode_sample(data: bytes, member: str, layout: Layout, *, expected_index: int | None = None,
                  num_samples: int | None = None) -> SampleRecords:
    """Read one ml-dr sample file's bytes (restricted unpickling) and decode its records.

    A plain function of picklable arguments, to run in worker processes. See :func:`decode_records`.

    Example:
        >>> layout = parse_config(archive.config, archive.config_member)
        >>> recs = decode_sample(m.data, m.name, layout, expected_index=m.index, num_samples=len(dataset))
    """
    return decode_records(load_torch_file(data, member), member, layout, expected_index=expected_index,
                          num_samples=num_samples)


def decode_member(member, layout: Layout, num_samples: int | None = None) -> SampleRecords:
    """:func:`decode_sample` of a :class:`~imagenet_plus.mldr.SampleMember` (its name states the index).

    Example:
        >>> with ProcessPoolExecutor() as pool:
        ...     for recs in pool.map(partial(decode_member, layout=layout, num_samples=n), archive):
        ...         ...
    """
    return decode_sample(member.data, member.name, layout, expected_index=member.index, num_samples=num_samples)
