"""File helpers every writer of the package shares: atomic writes, the sha256 of a file and the
removal of the temp files a killed writer left behind.

They know nothing of checkpoints, models or runs (:mod:`repan_zoo.checkpoint`, the trainer, the
hub, export and the benchmarks all write through :func:`atomic_write`).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, TypeVar, Union

__all__ = ["PathLike", "TEMP_SUFFIX", "atomic_write", "check_file_target", "file_facts", "remove_stale_temps", "sha256_file",
           "unverified_path", "write_verified"]

#: suffix of :func:`atomic_write`'s temp files (``.<name>.<random>.tmp`` beside the target)
TEMP_SUFFIX = ".tmp"

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        The 64 lowercase hex digits of its sha256.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_facts(path: PathLike) -> Dict[str, Union[int, str]]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, as export reports and the manifest record
    a written file. Raises ``OSError`` when the file cannot be read."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_file_target(path: PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked to be usable as a file to (over)write: an
    existing folder there (or above it, where a folder is needed) raises ``IsADirectoryError`` /
    ``NotADirectoryError`` naming it, before any work is done for the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the path of a file (e.g. inside it)")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"{path}: {blocking} is a file, so no folder can be made there; choose another path")
    return path


def atomic_write(path: PathLike, write: Callable[[str], object]) -> Path:
    """Write through ``write(tmp_path)`` to a temp file in the target folder, then rename:
    a killed process never leaves a half-written file under ``path``.

    The file gets the mode a plain ``open()`` would give it (0666 minus the umask), whatever
    ``write`` did to the temp file (``safetensors.save_file`` replaces it with a 0600 file). Temp
    files are named ``.<name>.<random>.tmp`` (:func:`remove_stale_temps` removes those a killed
    writer left).

    Args:
        path: the target; its folder is created if missing.
        write: called once with the temp file's path (a ``str``); it writes the whole content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` raises (the temp file is removed, ``path`` is left as it was), or
        ``OSError`` from the file system.
    """
    path = check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after write: the writer may have replaced the file
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temps(folder: PathLike) -> List[Path]:
    """Delete the temp files of :func:`atomic_write` under ``folder`` (recursively): what a writer
    killed mid-write left behind. Call it only as the folder's single writer (a live writer's temp
    file would go too).

    Args:
        folder: the folder to clean.

    Returns:
        The removed paths.
    """
    removed = []
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


T = TypeVar("T")


def unverified_path(path: PathLike) -> Path:
    """Where :func:`write_verified` keeps ``path`` until its check passed: ``deploy.safetensors`` →
    ``deploy.unverified.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.unverified{path.suffix}")


def write_verified(path: PathLike, write: Callable[[Path], object], check: Callable[[Path], T]) -> T:
    """Write a run's output file, and give it its name only once it has passed a check.

    ``write(tmp)`` writes the file as :func:`unverified_path` (itself atomically), ``check(tmp)`` reads
    it back and raises when it is wrong, then it is renamed to ``path``. A file that fails keeps the
    unverified name, for inspection, and no reader mistakes it for the output. Returns ``check``'s value.
    """
    path = Path(path)
    tmp = unverified_path(path)
    write(tmp)
    result = check(tmp)
    os.replace(tmp, path)
    return result
