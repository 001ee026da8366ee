"""An in-process fake of the Hugging Face Hub's HTTP API for dataset repos (no network).

It answers the requests ``huggingface_hub`` (and ``datasets`` through it) make to read a
dataset repo: repo info, tree listings, paths-info, and file ``HEAD``/``GET`` at
``/datasets/<repo>/resolve/<revision>/<path>``. Every request is logged, so a test can
assert which files were actually downloaded. Install it with :meth:`FakeHub.installed`,
which routes ``huggingface_hub``'s HTTP client to it and turns offline mode off.

Example:
    >>> hub = FakeHub()
    >>> hub.add_repo("org/name", folder, tags=("v1",))
    >>> with hub.installed():
    ...     path = snapshot_download("org/name", repo_type="dataset")
    >>> hub.downloaded("org/name")
    ['manifest.json', ...]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import httpx2

ENDPOINT = "https://huggingface.co"
_LFS_SUFFIXES = (".safetensors", ".parquet", ".bin", ".arrow")


@dataclass
class _Repo:
    commit: str
    files: dict[str, bytes]
    refs: dict[str, str]


@dataclass
class FakeHub:
    """A fake Hub holding dataset repos; ``log`` records ``(method, path)`` of every request."""

    repos: dict[str, _Repo] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)

    def add_repo(self, repo_id: str, folder: str | Path, *, tags=(), files: dict[str, bytes] | None = None) -> str:
        """Publish ``folder``'s files as the ``main`` head of ``repo_id`` (and ``tags``); return the commit."""
        folder = Path(folder)
        files = files if files is not None else {p.relative_to(folder).as_posix(): p.read_bytes()
                                                 for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
                                         sort_keys=True).encode()).hexdigest()
        self.repos[repo_id] = _Repo(commit, files, {"main": commit, **{t: commit for t in tags}})
        return commit

    def downloaded(self, repo_id: str) -> list[str]:
        """Files of ``repo_id`` whose content was fetched (``GET .../resolve/...``), sorted."""
        prefix = f"/datasets/{repo_id}/resolve/"
        out = set()
        for method, path in self.log:
            if method == "GET" and path.startswith(prefix):
                out.add(path[len(prefix):].split("/", 1)[1])
        return sorted(out)

    # -- HTTP ------------------------------------------------------------------------------------------
    def _resolve(self, repo_id: str, revision: str) -> _Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        revision = unquote(revision)
        if revision in repo.refs or revision == repo.commit:
            return repo
        return None

    @staticmethod
    def _error(status: int, code: str, message: str) -> httpx2.Response:
        return httpx2.Response(status, headers={"X-Error-Code": code, "X-Error-Message": message},
                               json={"error": message})

    def _entry(self, path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data),
                 "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if path.endswith(_LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _tree(self, repo: _Repo, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        out, dirs = [], set()
        for path, data in sorted(repo.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest and not recursive:
                dirs.add((prefix + "/" if prefix else "") + rest.split("/", 1)[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for k in range(1, len(parts) + 1):
                    dirs.add((prefix + "/" if prefix else "") + "/".join(parts[:k]))
            out.append(self._entry(path, data))
        return [{"type": "directory", "path": d, "size": 0, "oid": "0" * 40} for d in sorted(dirs)] + out

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path = unquote(request.url.path)
        self.log.append((request.method, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            if repo_id not in self.repos:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            rest = parts[4:]
            if not rest or rest[0] == "revision":
                revision = rest[1] if len(rest) > 1 else "main"
                repo = self._resolve(repo_id, revision)
                if repo is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return httpx2.Response(200, json={
                    "id": repo_id, "sha": repo.commit, "private": False, "gated": False, "disabled": False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)], "tags": [],
                    "lastModified": "2026-11-26T00:00:00.000Z", "downloads": 0, "likes": 0, "cardData": {}})
            if rest[0] in ("tree", "paths-info"):
                repo = self._resolve(repo_id, rest[1])
                if repo is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                if rest[0] == "tree":
                    recursive = request.url.params.get("recursive") in ("true", "True", "1")
                    return httpx2.Response(200, json=self._tree(repo, "/".join(rest[2:]), recursive))
                form = dict(httpx2.QueryParams(request.content.decode()))
                wanted = json.loads(form["paths"]) if "paths" in form else []
                out = []
                for p in wanted:
                    p = p.strip("/")
                    if p in repo.files:
                        out.append(self._entry(p, repo.files[p]))
                    elif any(f.startswith(p + "/") for f in repo.files):
                        out.append({"type": "directory", "path": p, "size": 0, "oid": "0" * 40})
                return httpx2.Response(200, json=out)
            return self._error(404, "EntryNotFound", f"no such endpoint {path}")
        if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            repo_id = "/".join(parts[1:3])
            if repo_id not in self.repos:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            repo = self._resolve(repo_id, parts[4])
            if repo is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {parts[4]}")
            file = "/".join(parts[5:])
            if file not in repo.files:
                return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit,
                                                     "X-Error-Message": "Entry not found"})
            data = repo.files[file]
            entry = self._entry(file, data)
            etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                       "Accept-Ranges": "bytes"}
            if request.method == "HEAD":
                return httpx2.Response(200, headers=headers)
            rng = request.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start, _, end = rng[6:].partition("-")
                data = data[int(start or 0): (int(end) + 1) if end else None]
                headers["Content-Length"] = str(len(data))
                return httpx2.Response(206, headers=headers, content=data)
            return httpx2.Response(200, headers=headers, content=data)
        return self._error(404, "EntryNotFound", f"no such endpoint {path}")

    @contextlib.contextmanager
    def installed(self):
        """Route huggingface_hub's HTTP client to this fake (offline mode off) for the ``with`` block."""
        from unittest import mock

        from huggingface_hub import constants, set_client_factory
        from huggingface_hub.utils._http import close_session, default_client_factory

        def factory():
            return httpx2.Client(transport=httpx2.MockTransport(self.handler), follow_redirects=True)

        close_session()
        set_client_factory(factory)
        try:
            with mock.patch.object(constants, "HF_HUB_OFFLINE", False), \
                    mock.patch.object(constants, "ENDPOINT", ENDPOINT):
                yield self
        finally:
            close_session()
            set_client_factory(default_client_factory)
