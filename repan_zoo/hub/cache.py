"""The two things we need from huggingface_hub's cache layout
(``models--org--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>}``):
removing a file that failed verification, and reading the ETag it was stored under."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

__all__ = ["evict", "blob_hash_of"]


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
