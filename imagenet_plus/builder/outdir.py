"""The output folder: what ``--out`` may hold, the lock, and the build's own state files.

Rules (nothing the builder did not create is ever deleted):

* ``--out`` must be absent, empty, an unfinished build of the *same* settings
  (``.build/settings.json`` matches) or a finished store of the same settings (then there is
  nothing to do). An unfinished build of *other* settings is refused naming each changed
  setting (old -> new value), unless it did no work (its ``.build/`` holds only its settings and
  lock, no shard was written): a run stopped before its first shard, e.g. by a corrupt image, does
  not block its own rerun with corrected inputs. Anything else (another build's store, a folder of
  the user's files, a ``.build/`` or ``reinforcements/*.tmp`` the builder did not write) is a
  :class:`~imagenet_plus.errors.BuildError` naming what is there and the fix; nothing is touched.
* Only files the builder wrote are ever removed: its temporary files, recognised by their exact
  name (``.{name}.XXXXXXXX.tmp`` of :func:`imagenet_plus._files.atomic_write`, for the names of
  this build's files), and its state files in ``.build/``, by name.
* One build at a time per ``--out`` and rank: ``fcntl.flock`` on ``.build/rank-{rank}.lock``.
  The kernel drops the lock when its process dies (even by SIGKILL), so a killed build never
  leaves it stuck; a second build is refused with the first one's pid.

The lifecycle every command that writes a store goes through (the build engine and
``import-ml-dr``) is :meth:`OutputFolder.take`: inspect, finish a finished run's leftover clean-up,
claim (lock, inspect again under the lock, record the settings), or report it finished.

``.build/`` holds ``settings.json`` (the settings this build's id covers), one identity part
per sample block and one state file per finished shard (its manifest entry, agreement counts
and read-back probe). Everything in it is removed once the manifest is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from safetensors.numpy import save as _st_save

from .._files import atomic_write, atomic_write_text
from ..errors import BuildError, StoreError
from ..store import MANIFEST_NAME, SAMPLES_NAME, SHARD_DIR, Manifest, teacher_change
from .plan import BuildPlan, Shard

__all__ = ["STATE_DIR", "SETTINGS_NAME", "OutputFolder", "BuildLock", "identity_part_name", "shard_state_name",
           "describe_changes"]

STATE_DIR = ".build"
SETTINGS_NAME = "settings.json"
_BUILDER = "imagenet-plus build"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's 8 random characters
_LOCK_RE = re.compile(r"^rank-\d+\.lock$")
_SHOWN = 5
_VALUE_CHARS = 60


def identity_part_name(s0: int, s1: int) -> str:
    """State file of the per-sample identity of sample block ``[s0, s1)``."""
    return f"identity-s{s0:08d}-s{s1:08d}.safetensors"


def shard_state_name(shard: Shard) -> str:
    """State file of a finished shard (entry, counts, probe)."""
    return f"state-{shard.file_name}"


def _own_temp(name: str, destinations: set[str]) -> bool:
    """Whether ``name`` is :func:`atomic_write`'s temporary file for one of ``destinations``."""
    m = _TEMP_RE.match(name)
    return m is not None and m.group("name") in destinations


def _listing(entries: list[str]) -> str:
    more = f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else ""
    return ", ".join(entries[:_SHOWN]) + more


def _differences(have: dict, want: dict) -> list[str]:
    return sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))


def _flat(d, prefix: str = "") -> dict[str, object]:
    """Nested dicts as ``{"a.b": value}`` (lists and scalars are leaves)."""
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _short(v: object) -> str:
    text = "(absent)" if v is _ABSENT else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 3] + "..."


_ABSENT = object()


def describe_changes(old: dict, new: dict) -> list[str]:
    """Each setting that differs between two settings dicts, as ``"name: old -> new"`` (dotted names)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {_short(a.get(k, _ABSENT))} -> {_short(b.get(k, _ABSENT))}"
            for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


@dataclass
class OutputFolder:
    """``--out`` of one build.

    Args:
        root: the folder.
        settings: the build's identity (``build_id``, ``settings``: the manifest settings the id
            covers, ``keys_digest``), as written to ``.build/settings.json``.
        plan: the build's shard plan (its file names are the builder's own).
    """

    root: Path
    settings: dict
    plan: BuildPlan
    _shards: set[str] = field(init=False, repr=False)
    _state: set[str] = field(init=False, repr=False)
    #: the command whose folders these are (recorded in ``settings.json``; another command's are refused)
    builder: ClassVar[str] = _BUILDER

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.created = not self.root.exists()  # discard() removes the folder itself only if this run made it
        self.settings = {"builder": self.builder, **self.settings}
        self._shards = {sh.file_name for sh in self.plan.shards}
        self._state = ({SETTINGS_NAME} | {identity_part_name(*b) for b in self.plan.sample_blocks}
                       | {shard_state_name(sh) for sh in self.plan.shards})

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    # -- what is there ---------------------------------------------------------------------------------
    def inspect(self) -> str:
        """``"new"`` (absent or empty), ``"resume"`` or ``"finished"``; raises for anything else.

        An unfinished run of other settings that did no work (see the module docstring) counts as
        ``"new"``: :meth:`claim` replaces its settings.

        Raises:
            BuildError: the folder holds another build (each changed setting named, old -> new), a
                finished store of other settings, or files the builder did not write (named, with the fix).
        """
        if not self.root.exists():
            return "new"
        if not self.root.is_dir():
            raise BuildError(f"--out {self.root} is a file; pass a folder (absent or empty) for the store")
        if (self.root / MANIFEST_NAME).is_file():
            self._check_finished()
            return "finished"
        settings = self._read_settings()
        if settings is not None and settings != self.settings:
            if not self._did_no_work():
                raise BuildError(self._other_settings(settings))
            return "new"  # a start that wrote nothing but its settings: begin again with these
        foreign = self._foreign_entries(resume=settings is not None)
        if foreign:
            raise BuildError(f"--out {self.root} holds files this build did not write ({_listing(foreign)}); the "
                             "builder writes only into an absent or empty folder, or resumes its own unfinished "
                             "build there, and never deletes what it did not write: choose another --out, or move "
                             "those files away yourself")
        return "new" if settings is None else "resume"

    def _other_settings(self, settings: dict) -> str:
        """The refusal of an unfinished run of other settings: each changed setting, its old and new value."""
        changes = describe_changes(settings.get("settings", {}), self.settings["settings"])
        if settings.get("keys_digest") != self.settings["keys_digest"]:
            changes.append("the dataset's sample keys (files added, removed or renamed in the data folder)")
        old_teacher, new_teacher = settings.get("settings", {}).get("teacher"), self.settings["settings"].get("teacher")
        if old_teacher != new_teacher:
            raise _teacher_error(self.root, "an unfinished build", old_teacher, new_teacher, "to resume it")
        if not changes:
            changes = [f"build_id: {settings.get('build_id')} -> {self.settings['build_id']}"]
        return (f"--out {self.root} holds an unfinished {self.builder} of other settings ({'; '.join(changes)}); "
                "rerun it with its original settings to resume it, or choose another --out for the new settings "
                "(the folder is left as it is)")

    def _did_no_work(self) -> bool:
        """Whether the folder holds only an earlier start's settings and lock (no shard, no state of its work)."""
        if any(p.name not in (STATE_DIR, SHARD_DIR) for p in self.root.iterdir()):
            return False
        shard_dir = self.root / SHARD_DIR
        if shard_dir.exists() and (not shard_dir.is_dir() or any(shard_dir.iterdir())):
            return False
        return all(p.name == SETTINGS_NAME or _LOCK_RE.match(p.name) or _own_temp(p.name, {SETTINGS_NAME})
                   for p in self.state_dir.iterdir())

    def has_state(self) -> bool:
        """Whether ``.build/`` holds this build's state (a build killed after writing its manifest)."""
        return (self.state_dir / SETTINGS_NAME).is_file()

    def _check_finished(self) -> None:
        try:
            m = Manifest.load(self.root)
        except StoreError as e:
            raise BuildError(f"--out {self.root} holds a manifest.json that is not a readable store manifest ({e}); "
                             "choose another --out (the folder is left as it is)") from e
        if m.build_id == self.settings["build_id"]:
            return
        diff = _differences(m.settings(), self.settings["settings"]) or ["the dataset's sample keys"]
        if "teacher" in diff:
            raise _teacher_error(self.root, "a finished store", m.teacher, self.settings["settings"].get("teacher"),
                                 "(the store is then complete as it is)")
        raise BuildError(f"--out {self.root} holds a finished store with other settings ({', '.join(diff)} differ); "
                         "choose another --out (the store is left as it is)")

    def _read_settings(self) -> dict | None:
        p = self.state_dir / SETTINGS_NAME
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            d = None
        if not isinstance(d, dict) or d.get("builder") != self.builder:
            raise BuildError(f"--out {self.root}: {p} was not written by {self.builder} (a folder of yours?); "
                             "choose another --out, or move .build/ away yourself (nothing was touched)")
        return d

    def _foreign_entries(self, resume: bool) -> list[str]:
        """Entries (relative paths) the builder would not have written into this folder."""
        foreign: list[str] = []
        own_top = {STATE_DIR, SHARD_DIR} | ({SAMPLES_NAME} if resume else set())
        for p in sorted(self.root.iterdir()):
            if p.name not in own_top and not (resume and _own_temp(p.name, {SAMPLES_NAME, MANIFEST_NAME})):
                foreign.append(p.name + ("/" if p.is_dir() else ""))
        shard_dir = self.root / SHARD_DIR
        if shard_dir.exists():
            if not shard_dir.is_dir():
                return foreign
            for p in sorted(shard_dir.iterdir()):
                ok = resume and (p.name in self._shards or _own_temp(p.name, self._shards))
                if not ok:
                    foreign.append(f"{SHARD_DIR}/{p.name}")
        if self.state_dir.is_dir():
            names = self._state if resume else {SETTINGS_NAME}
            for p in sorted(self.state_dir.iterdir()):
                ok = (resume and p.name in names) or _LOCK_RE.match(p.name) or _own_temp(p.name, names)
                if not ok:
                    foreign.append(f"{STATE_DIR}/{p.name}")
        return foreign

    # -- taking it -------------------------------------------------------------------------------------
    def take(self, rank: int = 0, finish_leftover: Callable[[], None] | None = None) -> "BuildLock | None":
        """The lifecycle of a run over this folder: ``None`` when it is finished, else the held lock.

        A finished store with this run's state still in ``.build/`` (killed after its manifest) is claimed
        by rank 0, ``finish_leftover()`` checks it, and the state is removed. Otherwise the folder is claimed
        (:meth:`claim`); when another process finished it meanwhile, the lock is dropped and ``None`` returned.

        Raises:
            BuildError: see :meth:`inspect` and :meth:`claim`.
        """
        if self.inspect() == "finished":
            if rank == 0 and self.has_state():
                lock, _ = self.claim(rank)
                with lock:
                    if finish_leftover is not None:
                        finish_leftover()
                    self.remove_state()
            return None
        lock, state = self.claim(rank)
        if state == "finished":  # another process finished it meanwhile
            lock.release()
            return None
        return lock

    def claim(self, rank: int) -> tuple["BuildLock", str]:
        """Lock the folder for ``rank``, check it again under the lock, record the settings.

        Returns:
            The lock and the folder's state under it (see :meth:`inspect`).

        Raises:
            BuildError: another build holds the lock, or the folder changed meanwhile.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = BuildLock(self.state_dir / f"rank-{rank}.lock", self.root)
        try:
            state = self.inspect()
            if state == "new":
                atomic_write_text(self.state_dir / SETTINGS_NAME, json.dumps(self.settings, indent=1,
                                                                               sort_keys=True) + "\n")
            (self.root / SHARD_DIR).mkdir(exist_ok=True)
        except BaseException:
            lock.release()
            raise
        return lock, state

    # -- state files -----------------------------------------------------------------------------------
    def write_state(self, name: str, arrays: dict, metadata: dict[str, str] | None = None) -> None:
        """Write state file ``name`` (safetensors, atomically)."""
        atomic_write(self.state_dir / name, [_st_save(arrays, metadata=metadata)])

    def read_state(self, name: str) -> tuple[dict, dict[str, str]] | None:
        """``(arrays, metadata)`` of state file ``name``, ``None`` when it is missing or unreadable."""
        from safetensors import safe_open

        p = self.state_dir / name
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="numpy") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception:  # a damaged state file: its shard is rebuilt
            return None

    # -- cleaning up after itself ----------------------------------------------------------------------
    def remove_temp_files(self, shards: list[Shard] | tuple[Shard, ...]) -> None:
        """Remove the builder's own temporary files of ``shards`` (a killed writer's leftovers)."""
        names = {sh.file_name for sh in shards}
        self._remove_matching(self.root / SHARD_DIR, lambda n: _own_temp(n, names))

    def remove_state(self) -> None:
        """After the manifest: remove every temporary and state file of this build, then ``.build/`` if empty."""
        self._remove_matching(self.root / SHARD_DIR, lambda n: _own_temp(n, self._shards))
        self._remove_matching(self.root, lambda n: _own_temp(n, {SAMPLES_NAME, MANIFEST_NAME}))
        self._remove_matching(self.state_dir, lambda n: n in self._state or bool(_LOCK_RE.match(n))
                              or _own_temp(n, self._state))
        try:
            self.state_dir.rmdir()
        except OSError:  # not empty: something that is not the builder's stays, as it was
            pass

    def discard(self) -> None:
        """Remove every file this run wrote (shards, samples file, state), then its empty folders."""
        self._remove_matching(self.root / SHARD_DIR, lambda n: n in self._shards or _own_temp(n, self._shards))
        self._remove_matching(self.root, lambda n: n == SAMPLES_NAME or _own_temp(n, {SAMPLES_NAME, MANIFEST_NAME}))
        self.remove_state()
        for d in (self.root / SHARD_DIR, self.state_dir) + ((self.root,) if self.created else ()):
            try:
                d.rmdir()
            except OSError:  # absent, or holds what this run did not write
                pass

    @staticmethod
    def _remove_matching(folder: Path, own) -> None:
        if not folder.is_dir():
            return
        for p in folder.iterdir():
            if p.is_file() and own(p.name):
                p.unlink(missing_ok=True)


def _teacher_error(root: Path, what: str, old, new, then: str) -> BuildError:
    """The refusal of a resume or rerun whose teacher differs from the one ``root``'s records were made with."""
    old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
    change = teacher_change(old, new) or "the teacher's description differs"
    return BuildError(f"--out {root} holds {what} made with another teacher: {change}; its records are that "
                      f"teacher's, so they are not mixed with or passed off as this one's: restore the original "
                      f"checkpoint {then}, or choose another --out to build with this teacher (the folder is left as "
                      "it is)")


class BuildLock:
    """An exclusive ``fcntl.flock`` on ``path`` for the life of the process (or until :meth:`release`).

    Raises:
        BuildError: another process holds it: "another build (pid N) is writing OUT; ...".
    """

    def __init__(self, path: Path, out: Path) -> None:
        import fcntl

        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(self._fd, 32).decode("ascii", "replace").strip() or "unknown"
            self.release()
            raise BuildError(f"another build (pid {pid}) is writing {out}; wait for it or use another --out") from None
        except BaseException:
            self.release()
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode("ascii"))  # the lock file's content is the holder's pid

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "BuildLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
