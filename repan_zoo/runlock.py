"""One writer per run directory: an exclusive ``fcntl.flock`` on ``<out>/.repan.lock``.

The kernel drops a ``flock`` when its process exits, however it exits (return, exception,
SIGKILL), so a crashed run never leaves a stale lock behind; the PID written into the file only
serves the message of a refused second writer. The lock file is removed on release, and a run
directory the lock itself had to create is removed again when the run refuses before writing
anything else, so a refused command leaves the disk as it found it.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from .errors import RunLockedError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".repan.lock"


class RunLock:
    """Exclusive, non-blocking lock of one run directory.

    ``acquire()`` creates the directory if needed and raises :class:`RunLockedError` (naming the
    holder's PID and the fix) when another live process holds the lock. ``release()`` is
    idempotent; ``release(discard_dir=True)`` also removes the directory when ``acquire`` created
    it and it holds nothing else (a run refused before it wrote anything)."""

    def __init__(self, out: os.PathLike, *, command: str = "repan-train"):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.command = command
        self._fd: Optional[int] = None
        self._created_dir = False

    def acquire(self) -> "RunLock":
        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        self._created_dir = self._created_dir or created
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                pid = self._holder()
                who = f"process {pid}" if pid else "another process"
                raise RunLockedError(
                    f"{self.out} is being written by {who} (lock {self.path}); one run directory takes one writer: "
                    f"wait for it to finish (or stop it), or choose another --out",
                    path=self.path, pid=pid,
                ) from None
            # the holder before us may have unlinked the file between our open and our flock: then we
            # hold a lock on a file nobody else can find, so try again on the current one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self) -> Optional[int]:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self, *, discard_dir: bool = False) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
        if discard_dir and self._created_dir:
            try:
                self.out.rmdir()  # only when empty
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
