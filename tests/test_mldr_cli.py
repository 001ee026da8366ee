"""``imagenet-plus import-ml-dr`` as a command: refusals (one line, exit 1, nothing left under OUT), Ctrl-C,
SIGKILL (a real process killed mid-import) and resumes byte-identical to an uninterrupted import, the other
commands on an imported store, and a light ``--help``."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fakes.mldr_archive import mldr_config, pack, torch_save_bytes, write_archive
from fakes.mldr_copies import make_copy, mldr_sizes, open_copy, write_archive_for
from imagenet_plus.cli import main
from imagenet_plus.mldr import import_mldr

ROOT = Path(__file__).resolve().parents[1]
PROG = "imagenet-plus import-ml-dr"


class _Runs:
    """A pickle payload that calls ``func(arg)`` when a general unpickler loads it."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    """A Food-101 copy (101 classes, one image each) and an archive of its published format over it."""
    tmp = tmp_path_factory.mktemp("mldr-cli")
    root = make_copy(tmp / "food", "food101")
    adapter = open_copy(root, "food101")
    fa = write_archive_for(tmp / "food_101.tar.gz", "food_101", adapter, ns=4, seed=3)
    ref = import_mldr(fa.path, tmp / "reference", dataset="food101", adapter=adapter, workers=0, progress=False,
                      augs_per_shard=2, samples_per_shard=30)
    return root, adapter, fa, _digests(ref.out)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:gz") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]


def _argv(source, root, out, *extra, workers: int = 0) -> list[str]:
    return ["import-ml-dr", str(source), "--dataset", "food101", "--data-root", str(root), "--out", str(out),
            "--workers", str(workers), "--no-progress", "--augs-per-shard", "2", "--samples-per-shard", "30", *extra]


def _refused(capsys, argv: list[str], out: Path, *needles: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))  # nothing half-written
    return err


def test_a_member_that_calls_a_global_is_refused_and_nothing_runs(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    marker = tmp_path / "pwned"
    members = _members(fa.path)
    bad = next(k for k, (n, _) in enumerate(members) if n.endswith("/57.pth.tar"))
    members[bad] = (members[bad][0], torch_save_bytes((57, [_Runs(os.system, f"touch {marker}")]), "57.pth.tar",
                                                      tmp_path))
    src = pack(tmp_path / "food_101.tar.gz", members, "tar.gz")
    for workers in (0, 2):  # decoded here, and by a pool of worker processes
        _refused(capsys, _argv(src, root, tmp_path / "out", workers=workers), tmp_path / "out",
                 "reinforced_data/57.pth.tar", "system")
        assert not marker.exists()


def test_a_truncated_archive_is_refused(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    data = fa.path.read_bytes()
    src = tmp_path / "food_101.tar.gz"
    src.write_bytes(data[: int(len(data) * 0.6)])
    _refused(capsys, _argv(src, root, tmp_path / "out"), tmp_path / "out", "truncated", "after member",
             "download it again")


def test_a_missing_config_is_refused(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    members = [(n, d) for n, d in _members(fa.path) if not n.endswith("config.pth.tar")]
    src = pack(tmp_path / "food_101.tar.gz", members, "tar.gz")
    _refused(capsys, _argv(src, root, tmp_path / "out"), tmp_path / "out", "no config.pth.tar", "--config")


def test_a_separate_config_file_is_used(food, tmp_path, capsys):
    root, adapter, fa, ref = food
    members = _members(fa.path)
    config = next(d for n, d in members if n.endswith("config.pth.tar"))
    src = pack(tmp_path / "food_101.tar.gz", [(n, d) for n, d in members if not n.endswith("config.pth.tar")],
               "tar.gz")
    (tmp_path / "config.pth.tar").write_bytes(config)
    assert main(_argv(src, root, tmp_path / "out", "--config", str(tmp_path / "config.pth.tar"))) == 0
    assert "imported food_101.tar.gz" in capsys.readouterr().out
    got = _digests(tmp_path / "out")
    assert set(got) == set(ref)  # same files (the manifest names another archive hash, so bytes differ)


def test_an_index_outside_the_dataset_is_refused(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    members = _members(fa.path)
    extra = next(d for n, d in members if n.endswith("/3.pth.tar"))
    src = pack(tmp_path / "food_101.tar.gz", members + [("reinforced_data/101.pth.tar", extra)], "tar.gz")
    _refused(capsys, _argv(src, root, tmp_path / "out"), tmp_path / "out", "reinforced_data/101.pth.tar",
             "outside the dataset's [0, 101)")


def test_a_variant_the_importer_does_not_know_is_refused(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    config = mldr_config("food101", "rrc+ra/re", ns=4)
    del config["reinforce"]["image_augmentation"]["random_erase"]  # RandAugment without erasing: never published
    members = [(n, torch_save_bytes(config, "config.pth.tar", tmp_path, protocol=None) if n.endswith("config.pth.tar")
                else d) for n, d in _members(fa.path)]
    src = pack(tmp_path / "food_101.tar.gz", members, "tar.gz")
    _refused(capsys, _argv(src, root, tmp_path / "out"), tmp_path / "out", "config.pth.tar", "not a published variant",
             "rrc+ra/re: uint8")


def test_another_datasets_archive_is_refused(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    config = mldr_config("flowers102", "rrc+ra/re", ns=4)
    members = [(n, torch_save_bytes(config, "config.pth.tar", tmp_path, protocol=None) if n.endswith("config.pth.tar")
                else d) for n, d in _members(fa.path)]
    src = pack(tmp_path / "flowers_102.tar.gz", members, "tar.gz")
    _refused(capsys, _argv(src, root, tmp_path / "out"), tmp_path / "out", "flowers102 reinforcement",
             "--dataset flowers102")


def test_crops_of_another_copy_are_refused_after_the_folder_was_taken(food, tmp_path, capsys):
    """Detected while converting (the folder is already claimed): everything written is removed again."""
    root, adapter, fa, _ = food
    other = open_copy(make_copy(tmp_path / "other", "food101"), "food101")
    sizes = [(h * 3, w * 3) for h, w in mldr_sizes(other)]
    big = write_archive(tmp_path / "food_101.tar.gz", "food_101", sizes=sizes, ns=4, seed=1)
    _refused(capsys, _argv(big.path, root, tmp_path / "out"), tmp_path / "out", "does not fit that image",
             "original files")


def test_ctrl_c_prints_the_resume_command_and_the_resume_is_byte_identical(food, tmp_path, capsys, monkeypatch):
    from imagenet_plus.mldr import _staging

    root, adapter, fa, ref = food
    put = _staging.Staging.put
    seen = {"n": 0}

    def interrupted(self, *a):
        seen["n"] += 1
        if seen["n"] == 40:
            raise KeyboardInterrupt
        return put(self, *a)

    monkeypatch.setattr(_staging.Staging, "put", interrupted)
    out = tmp_path / "out"
    assert main(_argv(fa.path, root, out, "--checkpoint-seconds", "0")) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "resume with:" in err[0], err
    assert not (out / "manifest.json").exists() and (out / ".build" / "staged.safetensors").is_file()
    monkeypatch.setattr(_staging.Staging, "put", put)
    r = import_mldr(fa.path, out, dataset="food101", data_root=root, workers=0, progress=False, augs_per_shard=2,
                    samples_per_shard=30)
    assert r.samples_resumed == 39 and r.samples_staged == 101 - 39
    assert _digests(out) == ref


@pytest.mark.parametrize("where", ["identity", "shards"])
def test_interrupted_elsewhere_resumes_byte_identically(food, tmp_path, monkeypatch, where):
    from imagenet_plus.mldr import _pipeline, importer

    root, adapter, fa, ref = food
    target, attr = (_pipeline, "_identity_task") if where == "identity" else (importer, "write_shard")
    original = getattr(target, attr)
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(target, attr, interrupted)
    out = tmp_path / "out"
    kw = dict(dataset="food101", adapter=adapter, workers=0, progress=False, augs_per_shard=2, samples_per_shard=30)
    with pytest.raises(KeyboardInterrupt):
        import_mldr(fa.path, out, **kw)
    monkeypatch.setattr(target, attr, original)
    r = import_mldr(fa.path, out, **kw)
    assert (r.shards_kept == 2) if where == "shards" else (r.samples_resumed == 0)
    assert _digests(out) == ref


def test_sigkill_mid_import_then_the_same_command_resumes_byte_identically(food, tmp_path):
    root, adapter, fa, ref = food
    out = tmp_path / "out"
    argv = _argv(fa.path, root, out, "--checkpoint-seconds", "0")
    child = (f"import os, signal, sys\nfrom imagenet_plus.mldr import _staging\nput = _staging.Staging.put\n"
             f"n = [0]\ndef killing(self, *a):\n    n[0] += 1\n    if n[0] == 60:\n"
             f"        os.kill(os.getpid(), signal.SIGKILL)\n    return put(self, *a)\n"
             f"_staging.Staging.put = killing\nfrom imagenet_plus.cli import main\nsys.exit(main({argv!r}))\n")
    r = subprocess.run([sys.executable, "-c", child], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "manifest.json").exists() and (out / ".build" / "staged.safetensors").is_file()
    assert main(argv) == 0  # the lock died with the process
    assert _digests(out) == ref  # no temp files, no .build folder, the same bytes


def test_help_is_light_and_the_command_is_listed():
    code = ("import sys, imagenet_plus.cli as c\np = c.build_parser()\n"
            "print('import-ml-dr' in p.format_help(), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.split() == ["True", "False"], r.stderr
    with pytest.raises(SystemExit) as e:
        from imagenet_plus.cli import build_parser

        build_parser().parse_args(["import-ml-dr", "--help"])
    assert e.value.code == 0


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main(["import-ml-dr", "x.tar.gz", "--dataset", "coco", "--data-root", ".", "--out", "o"]) == 2
    assert main(["import-ml-dr", "x.tar.gz", "--dataset", "food101", "--data-root", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--workers", "-1"]) == 2
    assert main(["import-ml-dr", str(tmp_path / "missing.tar.gz"), "--dataset", "food101", "--data-root",
                 str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o").exists()


def test_info_verify_and_show_work_on_an_imported_store(food, tmp_path, capsys):
    root, adapter, fa, _ = food
    out = tmp_path / "out"
    assert main(_argv(fa.path, root, out)) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "imported from" in text and "apple/ml-dr" in text and "rrc+ra/re" in text and fa.path.name in text
    assert main(["verify", str(out), "--full", "--data-root", str(root), "--workers", "0"]) == 0
    assert main(["show", str(out), "--data-root", str(root), "--index", "3", "--num", "3", "--out",
                 str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize("change", ["augs_per_shard", "archive"])
def test_a_killed_import_resumed_with_other_settings_names_the_change(food, tmp_path, monkeypatch, change):
    from imagenet_plus.errors import BuildError
    from imagenet_plus.mldr import importer

    root, adapter, fa, ref = food
    original = importer.write_shard
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(importer, "write_shard", interrupted)
    out = tmp_path / "out"
    kw = dict(dataset="food101", adapter=adapter, workers=0, progress=False, augs_per_shard=2, samples_per_shard=30)
    with pytest.raises(KeyboardInterrupt):
        import_mldr(fa.path, out, **kw)
    monkeypatch.setattr(importer, "write_shard", original)
    before = _digests(out)
    source = fa.path
    if change == "augs_per_shard":
        kw["augs_per_shard"] = 3
    else:
        source = write_archive_for(tmp_path / "other.tar.gz", "food_101", adapter, ns=4, seed=4).path
    with pytest.raises(BuildError) as ei:
        import_mldr(source, out, **kw)
    msg = str(ei.value)
    needle = "augs_per_shard: 2 -> 3" if change == "augs_per_shard" else "extra.provenance.bytes"
    assert needle in msg and "did not write" not in msg and "original settings" in msg, msg
    assert _digests(out) == before


def test_the_import_folder_uses_only_the_public_lifecycle_of_builder_outdir():
    import ast

    tree = ast.parse((ROOT / "imagenet_plus" / "mldr" / "_staging.py").read_text())
    names = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
             and node.module.endswith("builder.outdir") for a in node.names]
    assert names and all(not n.startswith("_") for n in names), names
