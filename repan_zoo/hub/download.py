"""Fetch weights through huggingface_hub and verify them before anything reads them.

* Pinned (manifest) Hub weights: ``hf_hub_download`` at the entry's 40-char commit (so a warm
  cache answers with no network at all; ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME``,
  ``HF_ENDPOINT`` are the library's and are respected), then size and sha256 against the manifest.
* Weights named by timm's ``hf-hub:`` prefix without a manifest entry: the Hub's metadata
  for the file (one HEAD: commit, size, ETag = LFS sha256 or git blob id) is fetched first,
  the download is pinned to that commit, and the file is checked against that metadata.
  Offline, the hash the cache recorded at download time (the blob's name) is used; a cached
  file without one is refused.
* Bundled weights: the package's file against the manifest, no network.

A file that fails a check is removed from the cache (snapshot link and blob) before the
error is raised, so no later call can pick it up; a cached copy that fails (damaged on disk)
is downloaded once more when the Hub is reachable.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .. import manifest
from ..errors import (
    ChecksumMismatchError,
    IntegrityError,
    OfflineError,
    TruncatedDownloadError,
    UnknownRevisionError,
    WeightsDownloadError,
    WeightsNotFoundError,
)
from .cache import blob_hash_of, drop_partial_download, evict
from .integrity import Expected, verify_file
from .resolve import WeightSource

__all__ = ["fetch", "Fetched", "hub_offline"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def hub_offline() -> bool:
    """huggingface_hub's offline switch (``HF_HUB_OFFLINE=1``)."""
    import huggingface_hub
    from huggingface_hub import constants

    check = getattr(huggingface_hub, "is_offline_mode", None)
    return bool(check()) if check is not None else bool(constants.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class Fetched:
    """A verified local weights file: ``path``, the Hub ``revision`` (commit) it came from, and the
    ``expected`` values it was checked against (None for a user's local-dir file)."""

    path: Path
    revision: Optional[str] = None
    expected: Optional[Expected] = None


def _commit_of(path: Path) -> Optional[str]:
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


#: weight files that unpickle (they can run code on load): never read here
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
SAFETENSORS_ONLY = (
    "repan_zoo reads safetensors only, never pickles (pytorch_model.bin, *.pth): timm's save_for_hf writes only "
    "pytorch_model.bin by default and push_to_hf_hub(..., safe_serialization=False) pushes only that; write "
    "them with safe_serialization=True (or 'both'), or convert: safetensors.torch.save_file(torch.load(path, "
    "weights_only=True), 'model.safetensors')"
)


def fetch(source: WeightSource, *, cache_dir: Optional[str] = None) -> Fetched:
    """``source``'s file, verified (size and hash) against what was published."""
    if source.kind == "bundled":
        return _bundled(source)
    if source.kind == "local":
        if source.path is None or not source.path.is_file():
            pickles = sorted(p.name for p in source.path.parent.glob("*") if p.suffix in PICKLE_SUFFIXES) \
                if source.path is not None and source.path.parent.is_dir() else []
            found = (f"; the folder holds {', '.join(pickles)}, which repan_zoo does not load" if pickles else "")
            need = (f"check the path given as pretrained_cfg_overlay=dict(file=...){found}" if source.user else
                    f"a local-dir: model folder needs model.safetensors beside config.json{found}")
            raise WeightsNotFoundError(
                f"weights of {source.label}: {source.path} does not exist; {need}. {SAFETENSORS_ONLY}",
                model=source.label, filename=str(source.path),
            )
        return Fetched(source.path)
    if source.kind == "url":
        return _from_url(source, cache_dir)
    if source.entry is not None:
        entry = source.entry
        expected = Expected(size=entry.size, sha256=entry.sha256, origin=f"the manifest entry {entry.name}")
        return _verified_download(source, source.revision, lambda path: expected, cache_dir, etag=entry.sha256)
    return _fetch_by_hub_metadata(source, cache_dir)


def _from_url(source: WeightSource, cache_dir: Optional[str]) -> Fetched:
    """A user's ``url=`` weights: downloaded once with ``torch.hub.download_url_to_file`` into
    ``cache_dir`` (default: torch hub's ``checkpoints`` folder). Nothing was published to verify
    them against; only safetensors files are read afterwards (no pickles)."""
    import torch.hub

    folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source.filename
    if not path.is_file():
        try:
            torch.hub.download_url_to_file(str(source.url), str(path), progress=False)
        except Exception as exc:  # urllib raises URLError / HTTPError / OSError
            raise WeightsNotFoundError(
                f"weights of {source.label}: cannot download {source.url} ({exc}); check the URL, or download the "
                "file yourself and pass pretrained_cfg_overlay=dict(file=...)",
                model=source.label, filename=source.filename,
            ) from exc
    return Fetched(path)


# -- bundled ----------------------------------------------------------------------------------
def _bundled(source: WeightSource) -> Fetched:
    entry = source.entry
    assert entry is not None and source.path is not None
    fix = (
        "The file ships inside the repan-zoo package: reinstall it (pip install --force-reinstall repan-zoo), "
        f"or restore {manifest.bundled_dir()} from git"
    )
    if not source.path.is_file():
        raise WeightsNotFoundError(
            f"weights of {source.label}: the bundled file {source.path} is missing. {fix}",
            model=source.label, filename=entry.filename,
        )
    expected = Expected(size=entry.size, sha256=entry.sha256, origin=f"the manifest entry {entry.name}")
    verify_file(source.path, expected, model=source.label, filename=entry.filename, fix=fix)
    return Fetched(source.path, None, expected)


# -- Hub ---------------------------------------------------------------------------------------
def _verified_download(
    source: WeightSource, revision: Optional[str], expected_for: Callable[[str], Expected], cache_dir: Optional[str],
    etag: Optional[str] = None,
) -> Fetched:
    """Download (or take from the cache) and verify. A failing file is evicted; a failing *cached*
    copy is downloaded once more when the Hub is reachable, a failing fresh download is an error.
    ``etag`` (the name the cache stores the file under, when known) lets a transfer that ended early
    remove its partial file."""
    fix_retry = (
        "The copy was deleted from the cache. Run again to download it afresh; if this persists, the file on the "
        f"Hub ({source.where}) is not the published one: report it, and use another tag or pretrained=False"
    )
    fix_offline = (
        "The copy was deleted from the cache. Go online (unset HF_HUB_OFFLINE) and run again to download it afresh"
    )
    damaged: Optional[IntegrityError] = None
    for attempt in (1, 2):
        was_cached = _is_cached(source, revision, cache_dir)
        try:
            path = _download(source, revision, cache_dir, etag)
        except OfflineError:
            if damaged is not None:  # the cached copy was bad and no fresh one can be had
                raise damaged from None
            raise
        try:
            expected = expected_for(path)
            verify_file(
                path, expected, model=source.label, filename=source.filename,
                fix=fix_offline if hub_offline() else fix_retry,
            )
            return Fetched(Path(path), _commit_of(Path(path)) or revision, expected)
        except IntegrityError as exc:
            evict(path)
            if attempt == 2 or not was_cached or hub_offline():
                raise
            damaged = exc
    raise AssertionError("unreachable")


def _is_cached(source: WeightSource, revision: Optional[str], cache_dir: Optional[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.hf_hub_id, source.filename, cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


def _download(source: WeightSource, revision: Optional[str], cache_dir: Optional[str], etag: Optional[str]) -> str:
    """``hf_hub_download`` with its errors turned into ours (each naming model, file and fix)."""
    from huggingface_hub import hf_hub_download

    from .. import __version__

    try:
        return hf_hub_download(
            source.hf_hub_id, source.filename, revision=revision, cache_dir=cache_dir,
            library_name="repan_zoo", library_version=__version__,
        )
    except Exception as exc:  # noqa: BLE001 - every failure is mapped below, unknown ones re-raised
        error = _translate(exc, source, revision)
        if isinstance(error, TruncatedDownloadError) and etag is not None:  # huggingface_hub < 2.0 keeps it
            drop_partial_download(source.hf_hub_id, etag, cache_dir)
        raise error from exc


def translate_hub_error(exc: Exception, name: str) -> Exception:
    """The typed error (:class:`OfflineError`, :class:`WeightsNotFoundError`, ...) for a
    huggingface_hub / HTTP error raised while timm fetched ``hf-hub:ORG/NAME[@REV]`` (its
    config.json or weights) outside this package's loader; other exceptions come back unchanged."""
    from .resolve import split_hf_hub_id

    repo, revision = split_hf_hub_id(name[len("hf-hub:"):] if name.startswith("hf-hub:") else name)
    source = WeightSource(name, None, "hub", "config.json / model.safetensors", hf_hub_id=repo, revision=revision)
    return _translate(exc, source, revision)


def _translate(exc: Exception, source: WeightSource, revision: Optional[str]) -> Exception:
    from huggingface_hub import utils as hf  # re-exports the error types in every supported version

    # older huggingface_hub: EntryNotFoundError is the 404 (and LocalEntryNotFoundError subclasses it)
    remote_missing = getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)

    what = f"weights of {source.label}: {source.filename} from {source.hf_hub_id}@{revision or 'main'}"
    kw = dict(model=source.label, filename=source.filename)
    pinned = source.entry is not None
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        mode = "offline mode is on (HF_HUB_OFFLINE=1)" if hub_offline() else "the Hub could not be reached"
        return OfflineError(
            f"{what}: not in the local cache and {mode}. Go online once to download it (it is then cached), "
            "point HF_ENDPOINT at a reachable mirror, or use bundled weights (repan_zoo.hub.list_pretrained())", **kw
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        fix = (
            "The manifest pins a commit the repo does not have (rewritten history?): update repan-zoo, or "
            "re-publish and update the manifest entry" if pinned else "Check the revision after '@' in the model name"
        )
        return UnknownRevisionError(f"{what}: the Hub has no revision {revision!r} in this repo. {fix}", **kw)
    if isinstance(exc, remote_missing):
        # a user's repo (no manifest entry) may hold timm's pickle only
        pickled = f" {SAFETENSORS_ONLY}" if not pinned and source.filename.endswith(".safetensors") else ""
        return WeightsNotFoundError(
            f"{what}: the Hub answered 404, the file is not in the repo at that revision. "
            f"Check the filename (hf_hub_filename) or the manifest entry; use another tag or pretrained=False.{pickled}",
            **kw,
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return WeightsNotFoundError(
            f"{what}: the Hub has no such repo (or it is private/gated: log in with `hf auth login`). "
            "Check the repo id; use another tag or pretrained=False", **kw
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return TruncatedDownloadError(
            f"{what}: the transfer ended early ({exc}). Nothing was kept; run again to retry the download", **kw
        )
    if isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpx2", "requests")):
        return WeightsDownloadError(f"{what}: the download failed ({type(exc).__name__}: {exc}). Run again", **kw)
    return exc


def _fetch_by_hub_metadata(source: WeightSource, cache_dir: Optional[str]) -> Fetched:
    """``hf-hub:`` weights without a manifest entry: verified against the Hub's own metadata."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    revision = source.revision or "main"
    meta = None
    if not hub_offline():
        try:
            meta = get_hf_file_metadata(hf_hub_url(source.hf_hub_id, source.filename, revision=revision))
        except Exception as exc:  # noqa: BLE001
            mapped = _translate(exc, source, revision)
            if not isinstance(mapped, (OfflineError, WeightsDownloadError)):
                raise mapped from exc
            meta = None  # unreachable: fall back to the cache and its recorded hash
    if meta is not None and meta.commit_hash and meta.etag:
        commit = meta.commit_hash
        expected = _expected_from_etag(source, meta.etag, meta.size, f"the Hub's metadata of {source.hf_hub_id}@{commit}")
        etag = expected.sha256 or expected.git_sha1
        pinned = _manifest_entry_for(source, commit)
        if pinned is not None:
            if expected.sha256 not in (None, pinned.sha256) or expected.size not in (None, pinned.size):
                raise ChecksumMismatchError(
                    f"weights of {source.label}: the Hub's metadata for {source.filename} at {commit} "
                    f"({expected.sha256 or expected.git_sha1}, {expected.size} bytes) contradicts the manifest entry "
                    f"{pinned.name} ({pinned.sha256}, {pinned.size} bytes). Nothing was downloaded. Report it; "
                    "use pretrained=False meanwhile",
                    model=source.label, filename=source.filename, expected=pinned.sha256, actual=expected.sha256,
                )
            expected = Expected(size=pinned.size, sha256=pinned.sha256, git_sha1=expected.git_sha1,
                                origin=f"the manifest entry {pinned.name} and the Hub's metadata")
        return _verified_download(source, commit, lambda path: expected, cache_dir, etag=etag)

    def from_cache(path: str) -> Expected:
        recorded = blob_hash_of(path)
        if recorded is None:
            raise OfflineError(
                f"weights of {source.label}: the cached {source.filename} from {source.hf_hub_id} has no recorded "
                "hash to verify it against, and the Hub cannot be reached for one. Go online once, or pin the "
                "weights in the manifest (repan-publish)", model=source.label, filename=source.filename,
            )
        return _expected_from_etag(source, recorded, None, "the hash recorded in the cache when it was downloaded")

    return _verified_download(source, revision, from_cache, cache_dir)


def _expected_from_etag(source: WeightSource, etag: str, size: Optional[int], origin: str) -> Expected:
    """An LFS file's ETag is its sha256, a git-stored file's is its git blob id."""
    etag = etag.strip('"').lower()
    if _SHA256.match(etag):
        return Expected(size=size, sha256=etag, origin=origin)
    if _SHA1.match(etag):
        return Expected(size=size, git_sha1=etag, origin=origin)
    raise IntegrityError(
        f"weights of {source.label}: {origin} gives {source.filename} the ETag {etag!r}, neither a sha256 nor a git "
        "blob id, so the file cannot be verified and was not loaded. Is HF_ENDPOINT a Hugging Face Hub?",
        model=source.label, filename=source.filename,
    )


def _manifest_entry_for(source: WeightSource, commit: str):
    for entry in manifest.entries_for(source.model):
        if (entry.source, entry.hf_hub_id, entry.revision, entry.filename) == ("hub", source.hf_hub_id, commit, source.filename):
            return entry
    return None
