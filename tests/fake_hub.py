"""A loopback Hugging Face Hub for the weights-hub tests, plus a tiny timm-registered Rep model.

The server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, ephemeral port, in a daemon thread)
speaks the part of the Hub's HTTP protocol the real ``huggingface_hub`` client uses here:

``POST /api/repos/create``                               create_repo (409 + url when it exists)
``POST /api/validate-yaml``                              README front-matter check of create_commit
``GET  /api/whoami-v2``                                  whoami
``POST /api/models/{repo}/preupload/{rev}``              upload modes: always ``regular`` (+ oid of the current file)
``POST /api/models/{repo}/commit/{rev}``                 ndjson commit: header, base64 ``file``, ``deletedFile``
``GET  /api/models/{repo}[/revision/{rev}]``             model_info (``?blobs=true``: size, blobId, lfs)
``HEAD|GET /{repo}/resolve/{rev}/{path}``                file metadata / bytes: ``X-Repo-Commit``, ``ETag``,
                                                         ``Content-Length``, and for LFS-tracked paths (per the
                                                         repo's ``.gitattributes``) ``X-Linked-Etag`` (sha256) and
                                                         ``X-Linked-Size``; ``Range`` requests
404s carry the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the
client raises its typed errors. Fault injection per file (:meth:`FakeHub.inject`): ``corrupt``
(flipped bytes, same length), ``truncate`` (half the body, the HEAD still announces the full
size), ``resize`` (a consistently different, longer file).

``HF_ENDPOINT`` must be set before ``huggingface_hub`` is imported (its constants are read at
import): ``tests/conftest.py`` calls :func:`install_session_hub` first thing. The ``hub`` fixture
then gives each test a reset server, its own HF cache and its own manifest / bundled-weights folders.
"""
from __future__ import annotations

import atexit
import base64
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "tester"
FAULTS = ("corrupt", "truncate", "resize")


def git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)
    refs: Dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))

    def resolve(self, revision: str) -> Optional[str]:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None

    def is_lfs(self, sha: str, path: str) -> bool:
        attributes = self.commits[sha].get(".gitattributes", b"").decode()
        patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line and line.split()]
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in patterns)


class FakeHub:
    """The server state; thread-safe. ``url`` is the endpoint (``http://127.0.0.1:<port>``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: Dict[str, Repo] = {}
        self.faults: Dict[Tuple[str, str], str] = {}
        self.refusals: Dict[str, Tuple[int, str]] = {}  # endpoint name → (HTTP status, message)
        self.requests: List[Tuple[str, str]] = []
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.repos.clear()
            self.faults.clear()
            self.refusals.clear()
            self.requests.clear()

    # -- test helpers -------------------------------------------------------------------------
    def inject(self, repo_id: str, path: str, mode: Optional[str]) -> None:
        """Serve ``path`` of ``repo_id`` damaged (``mode`` in :data:`FAULTS`), or fix it (None)."""
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"fault {mode!r}: choose one of {FAULTS}")
        with self.lock:
            if mode is None:
                self.faults.pop((repo_id, path), None)
            else:
                self.faults[(repo_id, path)] = mode

    def refuse(self, endpoint: str, status: Optional[int], message: str = "") -> None:
        """Answer every request to ``endpoint`` (``"create"``, ``"preupload"``, ``"commit"``, ``"info"``,
        ``"resolve"``, ``"whoami"``) with HTTP ``status`` and ``message`` (e.g. 403 for a token without
        write access, 500 for the Hub failing), or serve it again (None)."""
        with self.lock:
            if status is None:
                self.refusals.pop(endpoint, None)
            else:
                self.refusals[endpoint] = (status, message)

    def create(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            return self._create(repo_id, private)

    def commit(self, repo_id: str, files: Dict[str, bytes], deletions=(), summary: str = "update") -> str:
        """Commit directly (server side); returns the new commit sha."""
        with self.lock:
            return self._commit(self.repos[repo_id], "main", files, deletions, summary)

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].refs[branch]

    def file_requests(self, path_suffix: str = "") -> List[Tuple[str, str]]:
        with self.lock:
            return [(m, p) for m, p in self.requests if "/resolve/" in p and p.endswith(path_suffix)]

    # -- state changes (lock held) --------------------------------------------------------------
    def _create(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        self.repos[repo_id] = repo
        gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
        self._commit(repo, "main", {".gitattributes": gitattributes}, (), "initial commit", initial=True)
        return repo

    @staticmethod
    def _commit(repo: Repo, branch: str, files, deletions, summary: str, initial: bool = False) -> str:
        parent = None if initial else repo.refs[branch]
        snapshot = {} if parent is None else dict(repo.commits[parent])
        for path in deletions:
            snapshot.pop(path, None)
        snapshot.update(files)
        digest = hashlib.sha1()
        digest.update((parent or "").encode() + summary.encode())
        for path in sorted(snapshot):
            digest.update(path.encode() + b"\0" + git_hash(snapshot[path]).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = snapshot
        repo.refs[branch] = sha
        return sha


def _served(data: bytes, mode: Optional[str], method: str) -> Tuple[bytes, int]:
    """(body bytes, announced size) of a file under a fault."""
    if mode == "resize":
        data = data + b"\0" * 16
        return data, len(data)
    if method == "GET" and mode == "corrupt":
        damaged = bytearray(data)
        for i in range(len(damaged) // 2, len(damaged), max(1, len(damaged) // 7)):
            damaged[i] ^= 0xFF
        return bytes(damaged), len(data)
    if method == "GET" and mode == "truncate":
        return data[: len(data) // 2], len(data)
    return data, len(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeHub

    def log_message(self, fmt, *args):  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              content_type: str = "application/json", length: Optional[int] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: Optional[str], message: str, headers: Optional[Dict[str, str]] = None) -> None:
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        h["X-Error-Message"] = message
        self._json(status, {"error": message}, h)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with self.state.lock:
            self.state.requests.append((method, path))
        segs = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        try:
            route = self._match(method, segs, query)
            if route is None:
                return self._error(404, None, f"fake hub: no route for {method} {path}")
            endpoint, call = route
            with self.state.lock:
                refusal = self.state.refusals.get(endpoint)
            if refusal is not None:  # the Hub's answer when the token lacks rights, or the Hub fails
                self._body()
                return self._error(refusal[0], None, refusal[1])
            return call()
        except Exception as exc:  # a bug in the fake must show up as a 500, not a hang
            return self._error(500, None, f"fake hub error: {type(exc).__name__}: {exc}")

    def _match(self, method: str, segs: List[str], query) -> Optional[Tuple[str, Callable[[], None]]]:
        """``(endpoint name, its handler)`` for a request (names as :meth:`FakeHub.refuse` takes them)."""
        if method == "POST" and segs == ["api", "repos", "create"]:
            return "create", self._create_repo
        if method == "POST" and segs == ["api", "validate-yaml"]:
            return "validate", lambda: (self._body(), self._json(200, {"errors": [], "warnings": []}))[-1]
        if method == "GET" and segs == ["api", "whoami-v2"]:
            return "whoami", lambda: self._json(200, {"type": "user", "name": USER, "orgs": [], "auth": {}})
        if len(segs) >= 6 and segs[:2] == ["api", "models"] and method == "POST" and segs[4] in ("preupload", "commit"):
            repo_id, revision = f"{segs[2]}/{segs[3]}", "/".join(segs[5:])
            if segs[4] == "preupload":
                return "preupload", lambda: self._preupload(repo_id, revision)
            return "commit", lambda: self._commit(repo_id, revision, query)
        if method == "GET" and len(segs) >= 4 and segs[:2] == ["api", "models"]:
            revision = "/".join(segs[5:]) if len(segs) >= 6 and segs[4] == "revision" else "main"
            return "info", lambda: self._model_info(f"{segs[2]}/{segs[3]}", revision, query)
        if method in ("GET", "HEAD") and len(segs) >= 5 and segs[2] == "resolve":
            return "resolve", lambda: self._resolve(f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        return None

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    # -- endpoints ------------------------------------------------------------------------------
    def _repo(self, repo_id: str) -> Optional[Repo]:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _revision(self, repo_id: str, revision: str) -> Tuple[Optional[Repo], Optional[str]]:
        """The repo and the commit ``revision`` names in it; the Hub's 404 answered (and sha None)
        when either does not exist."""
        repo = self._repo(repo_id)
        if repo is None:
            return None, None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, sha

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            return self._error(400, None, "the fake hub serves model repos only")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.state.url}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            self.state._create(repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_id: str, revision: str) -> None:
        payload = json.loads(self._body() or b"{}")
        with self.state.lock:
            repo, sha = self._revision(repo_id, revision)
            if sha is None:
                return
            snapshot = repo.commits[sha]
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_hash(snapshot[f["path"]]) if f["path"] in snapshot else None,
                }
                for f in payload.get("files", [])
            ]
        self._json(200, {"files": files, "commitOid": sha})

    def _commit(self, repo_id: str, revision: str, query) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if query.get("create_pr"):
            return self._error(400, None, "the fake hub does not do pull requests")
        header = next((l["value"] for l in lines if l.get("key") == "header"), None)
        if header is None:
            return self._error(400, None, "commit payload without header")
        files: Dict[str, bytes] = {}
        deletions = []
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, None, "file content must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deletions.append(value["path"])
            elif key == "lfsFile":
                return self._error(400, None, "the fake hub takes regular uploads only (preupload says 'regular')")
            elif key != "header":
                return self._error(400, None, f"unsupported commit operation {key!r}")
        with self.state.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if revision not in repo.refs:
                return self._error(404, "RevisionNotFound", f"commits go to a branch; no branch {revision!r}")
            parent = header.get("parentCommit")
            if parent and parent != repo.refs[revision]:
                return self._error(412, None, "parentCommit is not the head of the branch")
            missing = [p for p in deletions if p not in repo.commits[repo.refs[revision]]]
            if missing:
                return self._error(404, "EntryNotFound", f"A file with this name doesn't exist: {missing}")
            sha = self.state._commit(repo, revision, files, deletions, header.get("summary", ""))
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.state.url}/{repo_id}/commit/{sha}",
                         "hookOutput": ""})

    def _model_info(self, repo_id: str, revision: str, query) -> None:
        with self.state.lock:
            repo, sha = self._revision(repo_id, revision)
            if sha is None:
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for path, data in sorted(repo.commits[sha].items()):
                sibling = {"rfilename": path}
                if blobs:
                    sibling.update(size=len(data), blobId=git_hash(data))
                    if repo.is_lfs(sha, path):
                        sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
                siblings.append(sibling)
            info = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha,
                    "private": repo.private, "disabled": False, "gated": False, "library_name": "timm",
                    "tags": ["timm"], "createdAt": repo.created, "lastModified": repo.created, "siblings": siblings}
        self._json(200, info)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        with self.state.lock:
            repo, sha = self._revision(repo_id, revision)
            if sha is None:
                return
            data = repo.commits[sha].get(path)
            if data is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {sha}", {"X-Repo-Commit": sha})
            lfs = repo.is_lfs(sha, path)
            mode = self.state.faults.get((repo_id, path))
        body, announced = _served(data, mode, self.command)
        reference = data if mode != "resize" else body
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if lfs:
            sha256 = hashlib.sha256(reference).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(announced)})
        else:
            headers["ETag"] = f'"{git_hash(reference)}"'
        status = 200
        start = self._range_start()
        if start and self.command == "GET":
            body = body[start:]
            headers["Content-Range"] = f"bytes {start}-{announced - 1}/{announced}"
            status = 206
        length = len(body) if self.command == "GET" else announced
        self._send(status, body, headers, content_type="application/octet-stream", length=length)

    def _range_start(self) -> int:
        value = self.headers.get("Range", "")
        if value.startswith("bytes=") and value[6:].split("-")[0].isdigit():
            return int(value[6:].split("-")[0])
        return 0


# -- session wiring --------------------------------------------------------------------------------
SESSION_HUB: Optional[FakeHub] = None

HF_ENV = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
}


def install_session_hub() -> FakeHub:
    """Start the session's loopback Hub and point huggingface_hub at it (``HF_ENDPOINT``, a throw-away
    ``HF_HOME``, no token, telemetry/Xet/progress bars off). Must run before huggingface_hub is imported."""
    global SESSION_HUB
    if SESSION_HUB is not None:
        return SESSION_HUB
    if "huggingface_hub" in sys.modules:
        raise RuntimeError(
            "huggingface_hub was imported before the fake Hub was installed; call fake_hub.install_session_hub() "
            "at the top of tests/conftest.py, before anything imports timm or repan_zoo"
        )
    hub = FakeHub().start()
    home = tempfile.mkdtemp(prefix="repan-tests-hf-home-")
    os.environ.update(HF_ENV)
    os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=home, HF_HUB_CACHE=os.path.join(home, "hub"))
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ASSETS_CACHE",
                "HUGGINGFACE_HUB_CACHE", "REPAN_ZOO_MANIFEST_DIR", "REPAN_ZOO_WEIGHTS_DIR"):
        os.environ.pop(key, None)

    def cleanup() -> None:
        hub.stop()
        shutil.rmtree(home, ignore_errors=True)

    atexit.register(cleanup)
    SESSION_HUB = hub
    return hub


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    """The session's fake Hub, emptied, with this test's own HF cache, manifest folder and bundled-weights
    folder (``REPAN_ZOO_MANIFEST_DIR`` / ``REPAN_ZOO_WEIGHTS_DIR``)."""
    session = install_session_hub() if SESSION_HUB is None and "huggingface_hub" not in sys.modules else SESSION_HUB
    from huggingface_hub import constants

    if session is None or constants.ENDPOINT != session.url:
        pytest.fail(
            f"huggingface_hub points at {constants.ENDPOINT}, not the fake Hub: tests/conftest.py must call "
            "fake_hub.install_session_hub() before anything imports huggingface_hub"
        )
    session.reset()
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once at import; the env alone is too late
    monkeypatch.setenv("REPAN_ZOO_MANIFEST_DIR", str(tmp_path / "manifest"))
    monkeypatch.setenv("REPAN_ZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    from repan_zoo import manifest

    manifest.reload_manifest()
    session.cache_dir = cache
    yield session
    manifest.reload_manifest()
    _reset_hf_sessions()  # a session built while go_offline() held is not reused by the next test


def go_offline(monkeypatch) -> None:
    """``HF_HUB_OFFLINE=1`` for the rest of the test, as if set before the import. huggingface_hub
    before 1.0 decides at the creation of its (cached) HTTP session whether it is offline, so the
    sessions are reset now, and by the ``hub`` fixture after the test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _reset_hf_sessions()


def _reset_hf_sessions() -> None:
    from huggingface_hub import utils

    reset = getattr(utils, "reset_sessions", None)
    if reset is not None:
        reset()


# -- a tiny timm-registered Rep model ----------------------------------------------------------------
TEST_MODEL_CFG = {
    "num_classes": 10,
    "input_size": (1, 16, 16),
    "mean": (0.5,),
    "std": (0.25,),
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "first_conv": "stem",
    "classifier": "fc",
}


def _tiny_net_class():
    import torch.nn as nn

    from repan_zoo.blocks import RepBlock

    class TinyRepNet(nn.Module):
        """stem Rep block (stride 2) → Rep block with identity → global pool → fc. timm's model API basics."""

        def __init__(self, in_chans: int = 1, num_classes: int = 10, width: int = 8, deploy: bool = False):
            super().__init__()
            self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, width
            self.stem = RepBlock(in_chans, width, 3, 2, branches=("conv_1x1",), deploy=deploy)
            self.body = RepBlock(width, width, 3, 1, branches=("conv_1x1", "identity"), deploy=deploy)
            self.act = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes: int, global_pool=None):
            self.num_classes = num_classes
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        def forward_features(self, x):
            return self.act(self.body(self.act(self.stem(x))))

        def forward_head(self, x, pre_logits: bool = False):
            x = self.pool(x).flatten(1)
            return x if pre_logits else self.fc(x)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    return TinyRepNet


def register_test_model(name: str = "hubtest_tiny") -> str:
    """Register ``name`` with timm (once), following the model-registry contract: build with
    pretrained=False, keep timm's pretrained_cfg (architecture, tag), then ``load_pretrained(model)``.
    Its default cfgs come from the manifest read now (``manifest.timm_cfgs``). The name has no
    ``repan_`` prefix, so ``timm.list_models('repan_*')`` is unaffected."""
    import timm
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

    from repan_zoo import manifest

    if timm.is_model(name):
        return name
    net = _tiny_net_class()

    def entrypoint(pretrained: bool = False, **kwargs):
        from repan_zoo.hub import load_pretrained

        cache_dir = kwargs.pop("cache_dir", None)
        model = build_model_with_cfg(net, name, pretrained=False, **kwargs)
        if pretrained:
            load_pretrained(model, cache_dir=cache_dir)
        return model

    entrypoint.__name__ = name
    entrypoint.__module__ = __name__
    module = sys.modules[__name__]
    cfgs = dict(getattr(module, "default_cfgs", {}))
    cfgs.update(generate_default_cfgs(manifest.timm_cfgs(name, TEST_MODEL_CFG)))
    module.default_cfgs = cfgs
    register_model(entrypoint)
    return name


def make_deploy_run(folder, model: str = "hubtest_tiny", seed: int = 0, **model_kwargs):
    """A trained-looking run: random train-form ``model`` (random BN statistics) fused by
    ``repan_zoo.reparameterize`` (which measures the exactness certificate), saved as a deploy
    checkpoint, plus a ``final.json`` with metrics, recipe and that certificate.
    Returns ``(checkpoint, metrics_json, deploy_model)``."""
    import timm

    from helpers import randomize
    from repan_zoo import reparameterize
    from repan_zoo.checkpoint import save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = randomize(timm.create_model(model, **model_kwargs), seed=seed)
    deploy = reparameterize(net).eval()
    checkpoint = save_checkpoint(deploy, folder / "deploy.safetensors", architecture=model)
    cfg = net.pretrained_cfg
    kwargs = {"num_classes": net.num_classes, "in_chans": net.in_chans, **model_kwargs}
    doc = {  # the layout of the trainer's final.json (repan_zoo.annealing)
        "model": model,
        "create_kwargs": kwargs,
        "method": "repan",
        "recipe": {"method": "repan", "model": model, "model_kwargs": model_kwargs, "cycles": 2, "epochs": 1,
                   "lam_schedule": "linear", "kd_alpha": 0.9, "dataset": "fashion_mnist"},
        "data": {"dataset": "fashion_mnist", "num_classes": net.num_classes, "input_size": list(cfg["input_size"]),
                 "mean": list(cfg["mean"]), "std": list(cfg["std"])},
        "val_top1": 88.5,
        "test_top1": 87.25,
        "exactness": {**deploy.repan_exactness, "probe": "2 random inputs"},
    }
    metrics = folder / "final.json"
    metrics.write_text(json.dumps(doc))
    return checkpoint, metrics, deploy


def cached_files(cache_dir) -> List[str]:
    """Weight bytes left in an HF cache: blobs, snapshot entries and partial downloads (not refs / locks)."""
    out = []
    for root, _, files in os.walk(cache_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), cache_dir)
            parts = rel.split(os.sep)
            if "blobs" in parts or "snapshots" in parts or name.endswith(".incomplete"):
                out.append(rel)
    return sorted(out)
