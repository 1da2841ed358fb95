"""The two things we need from huggingface_hub's cache layout
(``models--org--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>}``):
removing a file that failed verification (and the partial download a failed transfer left), and
reading the ETag it was stored under."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

__all__ = ["evict", "blob_hash_of", "drop_partial_download"]


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


def drop_partial_download(repo_id: str, etag: str, cache_dir: Optional[str] = None) -> Optional[Path]:
    """Remove the partial download of one file of the model repo ``repo_id``: ``blobs/<etag>.incomplete``
    in ``cache_dir`` (default: huggingface_hub's ``HF_HUB_CACHE``), where ``etag`` is the name the
    file is stored under (an LFS file's sha256, otherwise its git blob id; huggingface_hub's
    ``file_download`` layout). huggingface_hub before 2.0 keeps that file after a transfer that ended
    early, to resume from on the next call; a zoo download that failed its size check must leave
    nothing (the next call downloads afresh and is verified).

    Other files' partial downloads are not touched, and neither is this one while another process
    holds huggingface_hub's lock for it (``.locks/<repo folder>/<etag>.lock``: it is downloading the
    file now and may be resuming from it). Returns the removed path, or None."""
    from filelock import FileLock, Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir or constants.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    partial = root / folder / "blobs" / f"{etag}.incomplete"
    if not partial.exists():
        return None
    lock = root / ".locks" / folder / f"{etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(lock), timeout=0):
            partial.unlink()
    except (Timeout, FileNotFoundError):  # another process is downloading it, or has just finished
        return None
    except NotImplementedError:  # no flock on this file system: whose file it is cannot be told, so keep it
        return None
    return partial
