"""Run every benchmark script as a subprocess and print one JSON with all results.

Usage::

    python benchmarks/run_all.py            # full sizes
    python benchmarks/run_all.py --quick    # small sizes (a minute or two on a laptop)
    python benchmarks/run_all.py --quick --only store_size,training_cost --out runs/bench.json

Each script prints one JSON object on stdout (its last line that parses as JSON
is taken); a script that fails or prints no JSON is reported under its name
with its exit status and the tail of its stderr, and ``run_all`` exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The benchmark scripts, in the order they run.
BENCHMARKS = ("replay_throughput", "identity_cost", "construct_time", "store_size", "store_access", "build_throughput",
              "training_cost", "mldr_import", "records_per_decode")
#: Small sizes for scripts without a ``--quick`` flag of their own (``--quick`` is passed where ``--help`` lists it).
QUICK_ARGS = {
    "replay_throughput": ["--images", "12", "--augs", "2", "--seconds", "1", "--rounds", "3"],
    "store_size": ["--samples", "300", "--augs", "50", "--kl-records", "4000"],
    "store_access": ["--samples", "2000", "--augs", "50", "--samples-per-shard", "500", "--augs-per-shard", "25",
                     "--reads", "4000"],
}


def _supports_quick(script: Path) -> bool:
    """Whether the script declares a ``--quick`` flag (read from its source, without starting it)."""
    try:
        return '"--quick"' in script.read_text(encoding="utf-8")
    except OSError:
        return False


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def quick_args(name: str) -> list[str]:
    """The arguments that make ``benchmarks/{name}.py`` run at small sizes."""
    script = HERE / f"{name}.py"
    if _supports_quick(script):
        return ["--quick"]
    return list(QUICK_ARGS.get(name, []))


def _last_json(stdout: str) -> dict | None:
    """The whole stdout if it is one JSON object, else its last line that is."""
    text = stdout.strip()
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def run_one(name: str, *, quick: bool, timeout: float, extra: list[str]) -> dict:
    """Run ``benchmarks/{name}.py`` and return its JSON (or an error record)."""
    script = HERE / f"{name}.py"
    if not script.is_file():
        return {"ok": False, "error": f"{script.relative_to(HERE.parent)} does not exist"}
    cmd = [sys.executable, str(script)] + (quick_args(name) if quick else []) + extra
    env = _env()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "seconds": time.perf_counter() - t0,
                "stderr_tail": (e.stderr or "")[-2000:] if isinstance(e.stderr, str) else ""}
    seconds = time.perf_counter() - t0
    result = _last_json(proc.stdout)
    if proc.returncode != 0 or result is None:
        return {"ok": False, "returncode": proc.returncode, "seconds": seconds,
                "command": [str(Path(cmd[1]).relative_to(HERE.parent))] + cmd[2:],
                "error": "exited with status %d" % proc.returncode if proc.returncode else "printed no JSON object",
                "stderr_tail": proc.stderr[-2000:]}
    return {"ok": True, "seconds": seconds, "command": [str(Path(cmd[1]).relative_to(HERE.parent))] + cmd[2:],
            "result": result}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; returns 0 when all succeeded, 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (passed on to every script)")
    p.add_argument("--only", default=None,
                   help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per script (default 1800)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            p.error(f"--only: unknown benchmark(s) {unknown}; valid names are {', '.join(BENCHMARKS)}")
    import torch

    report = {
        "quick": bool(args.quick),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "benchmarks": {},
    }
    for name in names:
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        r = run_one(name, quick=args.quick, timeout=args.timeout, extra=[])
        status = "ok" if r["ok"] else f"FAILED: {r['error']}"
        print(f"[run_all] {name}: {status} ({r.get('seconds', 0.0):.1f} s)", file=sys.stderr, flush=True)
        report["benchmarks"][name] = r
    report["ok"] = all(r["ok"] for r in report["benchmarks"].values())
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
