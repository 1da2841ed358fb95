"""Integrity checks of a weights file, done before any tensor is read from it.

huggingface_hub does not check content hashes, so every file is checked here against what
was published: its size first (cheap, catches truncation), then its sha256 (or, for a
file the Hub stores in git rather than LFS, its git blob sha1).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ChecksumMismatchError, SizeMismatchError, TruncatedDownloadError
from ..fileio import sha256_file

__all__ = ["Expected", "sha256_file", "git_blob_sha1", "verify_file"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Expected:
    """What a file must be. ``sha256`` (LFS / manifest) or ``git_sha1`` (a git blob id) or both;
    ``size`` in bytes. ``origin`` says where these values come from, for the error messages."""

    size: Optional[int] = None
    sha256: Optional[str] = None
    git_sha1: Optional[str] = None
    origin: str = "the manifest"


def git_blob_sha1(path: os.PathLike) -> str:
    """git's object id of a file: sha1 of ``b"blob <size>\\0" + content`` (the Hub's ETag of non-LFS files)."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: os.PathLike, expected: Expected, *, model: str, filename: str, fix: str) -> None:
    """Raise :class:`SizeMismatchError` / :class:`TruncatedDownloadError` / :class:`ChecksumMismatchError`
    unless ``path`` has the expected size and hash. ``fix`` is the sentence that tells the user what to do."""
    if expected.sha256 is None and expected.git_sha1 is None:
        raise ValueError("verify_file needs a sha256 or a git sha1 to check against")
    path = Path(path)
    actual_size = path.stat().st_size
    if expected.size is not None and actual_size != expected.size:
        cls = TruncatedDownloadError if actual_size < expected.size else SizeMismatchError
        what = "truncated" if actual_size < expected.size else "of the wrong size"
        raise cls(
            f"weights of {model}: {filename} is {what}: {actual_size} bytes, but {expected.origin} says "
            f"{expected.size}. It was not loaded. {fix}",
            model=model, filename=filename, expected=expected.size, actual=actual_size,
        )
    for label, want, digest in (("sha256", expected.sha256, sha256_file), ("git blob id", expected.git_sha1, git_blob_sha1)):
        if want is None:
            continue
        actual = digest(path)
        if actual != want.lower():
            raise ChecksumMismatchError(
                f"weights of {model}: {filename} is corrupted: {label} {actual} but {expected.origin} says "
                f"{want}. It was not loaded. {fix}",
                model=model, filename=filename, expected=want, actual=actual,
            )
