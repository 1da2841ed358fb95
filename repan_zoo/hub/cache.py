"""The two things we need from huggingface_hub's cache layout
(``models--org--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>}``):
removing a file that failed verification (and the partial download a failed transfer left), and
reading the ETag it was stored under."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

__all__ = ["evict", "blob_hash_of", "drop_partial_downloads"]

#: slack on the start time of a download when telling its partial file from older ones: file
#: times come from the kernel's coarse clock, which may lag ``time.time()`` by a few ms
_CLOCK_SLACK_S = 2.0


def _blob_of(pointer: Path) -> Optional[Path]:
    if not pointer.is_symlink():
        return None
    blob = Path(os.path.realpath(pointer))
    return blob if blob.parent.name == "blobs" else None


def evict(path: os.PathLike) -> List[Path]:
    """Remove a downloaded file from the cache: its snapshot entry and, when it is a link, the blob
    it points to (so neither a later ``hf_hub_download`` nor anything else finds it). Returns the
    removed paths."""
    pointer = Path(path)
    targets = [pointer]
    blob = _blob_of(pointer)
    if blob is not None:
        targets.append(blob)
    removed = []
    for target in targets:
        try:
            target.unlink()
            removed.append(target)
        except FileNotFoundError:
            pass
    return removed


def blob_hash_of(path: os.PathLike) -> Optional[str]:
    """The ETag a cached file was stored under (its blob's name: the sha256 of an LFS file, the git
    blob id otherwise), or None when the cache holds a plain copy (no symlinks)."""
    blob = _blob_of(Path(path))
    return blob.name if blob is not None else None


def drop_partial_downloads(repo_id: str, cache_dir: Optional[str], since: float) -> List[Path]:
    """Remove the partial downloads (``blobs/<etag>.incomplete``) of the model repo ``repo_id`` in
    ``cache_dir`` (default: huggingface_hub's ``HF_HUB_CACHE``) written since ``since`` (a
    ``time.time()`` value, seconds), i.e. what a transfer that ended early left behind.
    huggingface_hub before 2.0 keeps that file to resume from on the next call; a zoo download that
    failed its size check must leave nothing (the next call downloads afresh and is verified).
    Returns the removed paths."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    removed = []
    for partial in blobs.glob("*.incomplete"):
        try:
            if partial.stat().st_mtime >= since - _CLOCK_SLACK_S:
                partial.unlink()
                removed.append(partial)
        except FileNotFoundError:
            pass
    return removed
