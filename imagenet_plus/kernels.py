"""Which resize kernel renders a record's pixels, recorded at build time and compared on replay.

Exact replay ("replay equals build") rests on the geometry's resize giving the same pixels on
the replaying machine as on the building one. torchvision's bilinear resize of a uint8 CPU tensor
(every policy's default geometry) takes one of two kernel families:

* ``"uint8"``: torch's integer kernel, chosen by torchvision where torch's CPU capability is AVX2
  or AVX512, and on aarch64. torch's AVX2 code and its generic code (what aarch64 and a forced
  ``ATEN_CPU_CAPABILITY=default`` run) give the same pixels (``tests/test_kernels.py``), so the
  instruction set is recorded as detail, not compared.
* ``"float"``: elsewhere (an x86 CPU below AVX2, or ``ATEN_CPU_CAPABILITY=default``) it converts to
  float, interpolates and rounds back, which differs from ``"uint8"`` by up to 1 grey level.

Other geometries do not depend on the machine: ``"uint8"`` for bicubic (torchvision always uses
torch's integer kernel there), ``"nearest"``, and ``"pil"`` for the ml-dr flavour (Pillow's own
integer resize). :func:`policy_kernel` says which family a policy config uses here.

The builder and the ml-dr importer record :func:`kernel_report` in ``manifest.reports`` under
:data:`REPORT_KEY` (``"resize_kernel"``). It describes the machine, not the data, so it stays out
of the build id: the same records built on two machines have one build id, and a store without
the entry (built before it existed) opens and verifies unchanged, without a warning. The ranks of a
distributed build compare their families before any shard is written and refuse to go on if they
differ (:func:`imagenet_plus.builder.plan.check_ranks_agree_on_kernel`), so the recorded family is
every shard's, not only rank 0's.
:func:`check_replay_kernel` (called where the dataset and the ``datasets`` transform open a store)
warns once per process, with a :class:`ResizeKernelWarning`, when the families differ.
"""

from __future__ import annotations

import functools
import platform
import warnings
from typing import Any, Mapping

__all__ = ["REPORT_KEY", "FAMILIES", "ResizeKernelWarning", "resize_kernel", "policy_kernel", "kernel_report",
           "recorded_kernel", "kernel_mismatch", "check_replay_kernel"]

#: The key of the kernel report in ``manifest.reports``.
REPORT_KEY = "resize_kernel"
#: Every family :func:`policy_kernel` can return (a fixed order: ranks exchange them as indices).
FAMILIES = ("uint8", "float", "nearest", "pil", "other")
#: Flavours whose geometry resizes with Pillow (their records do not depend on torch's kernels).
PIL_FLAVOURS = ("ml-dr",)
_WARNED: set[tuple[str, str]] = set()


class ResizeKernelWarning(UserWarning):
    """A store replayed with another resize kernel family than it was built with (pixels within 1 grey level)."""


def _probe():
    """A fixed uint8 image whose bilinear downscale differs between the integer and the float kernel."""
    import torch

    k = torch.arange(3 * 29 * 31, dtype=torch.int64)
    return ((k * 2654435761) % 251).to(torch.uint8).reshape(3, 29, 31)


@functools.lru_cache(maxsize=None)
def resize_kernel() -> str:
    """The family torchvision's bilinear antialiased resize of uint8 CPU tensors uses here: ``"uint8"`` or ``"float"``.

    Measured, not guessed from the CPU: a fixed probe image is resized by torchvision and compared
    with torch's integer kernel and with the float round trip (``"other"`` if it equals neither).

    Example:
        >>> resize_kernel()  # on an AVX2 x86 machine
        'uint8'
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    x = _probe()
    got = F.resize(x, [13, 11], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    kw = dict(size=(13, 11), mode="bilinear", align_corners=False, antialias=True)
    integer = torch.nn.functional.interpolate(x[None], **kw)[0]
    floating = torch.nn.functional.interpolate(x[None].float(), **kw)[0].round().to(torch.uint8)
    if torch.equal(got, integer):
        return "uint8"
    return "float" if torch.equal(got, floating) else "other"


def policy_kernel(policy: Mapping[str, Any]) -> str:
    """The resize family a policy config (a manifest's ``policy``) renders with on this machine."""
    if policy.get("flavour") in PIL_FLAVOURS:
        return "pil"
    geometry = policy.get("geometry") if isinstance(policy.get("geometry"), Mapping) else {}
    interpolation = geometry.get("interpolation", "bilinear")  # type: ignore[union-attr]
    if interpolation == "nearest":
        return "nearest"
    if interpolation == "bicubic":
        return "uint8"
    return resize_kernel()


def _machine() -> dict[str, str]:
    import PIL
    import torch
    import torchvision

    return {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "machine": platform.machine(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__}


def kernel_report(policy: Mapping[str, Any]) -> dict[str, str]:
    """What ``manifest.reports["resize_kernel"]`` records: the policy's family here, and the machine's details.

    Example:
        >>> kernel_report(create_policy("rrc").config)["family"]
        'uint8'
    """
    return {"family": policy_kernel(policy), **_machine()}


def recorded_kernel(manifest) -> dict | None:
    """The kernel report a store's manifest carries, ``None`` for a store built before it was recorded."""
    report = (manifest.reports or {}).get(REPORT_KEY)
    return report if isinstance(report, dict) and isinstance(report.get("family"), str) else None


def kernel_mismatch(manifest) -> str | None:
    """Why replay here may not be bit-exact with the build (the families differ), ``None`` if it is or is unknown."""
    built = recorded_kernel(manifest)
    if built is None:
        return None
    here = policy_kernel(manifest.policy)
    if built["family"] == here:
        return None
    machine = _machine()
    fix = ("run on an x86 CPU where torch reports AVX2 or AVX512 (torch.backends.cpu.get_cpu_capability()) or on "
           "aarch64, with ATEN_CPU_CAPABILITY unset" if built["family"] == "uint8" else
           "set ATEN_CPU_CAPABILITY=default before starting Python (x86), as the build machine's torch did")
    return (f"store {manifest.dataset}/{manifest.split} (build id {manifest.build_id}) was rendered with the "
            f"{built['family']!r} resize kernel (torch CPU capability {built.get('cpu_capability', '?')}, "
            f"{built.get('machine', '?')}); this machine uses {here!r} (torch CPU capability "
            f"{machine['cpu_capability']}, {machine['machine']}). The resized crops may differ from the ones the "
            "teacher saw by up to 1 grey level (about 1 pixel in 7), which RandAugment's threshold ops (Solarize, "
            "Posterize, Equalize) can amplify on a few pixels; the stated tolerance of the replayed images is a "
            "mean difference <= 1 grey level and >= 99% teacher top-1 agreement, so the stored targets still fit, "
            f"but replay is not bit-exact. For bit-exact replay, {fix}. To silence this: "
            "warnings.filterwarnings('ignore', category=imagenet_plus.kernels.ResizeKernelWarning)")


def check_replay_kernel(manifest) -> str | None:
    """Warn (:class:`ResizeKernelWarning`), once per process and pair of families, when a store is replayed with
    another resize kernel family than it was built with; returns the message (``None``: same family or unknown)."""
    message = kernel_mismatch(manifest)
    if message is not None:
        key = (recorded_kernel(manifest)["family"], policy_kernel(manifest.policy))  # type: ignore[index]
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(message, ResizeKernelWarning, stacklevel=3)
    return message
