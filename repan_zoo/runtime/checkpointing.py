"""Per-epoch run checkpoints, written atomically, so that ``--resume`` continues a killed run.

Layout under ``<out>/checkpoints/``::

    ep0003/model.safetensors   the model (train form) — repan_zoo.checkpoint.save_checkpoint
    ep0003/state.pt            optimiser, grad scaler, RNG states (as tensors), progress, history
    latest.json                {"dir": "ep0003", ...}: replaced atomically *after* both files exist

A process killed at any moment leaves ``latest.json`` pointing at a complete pair; older
epoch folders beyond ``keep`` are removed only after the pointer moved, so a pair damaged on disk
later still has an older one to resume from (:meth:`Checkpointer.load` falls back to it). ``state.pt`` holds only
tensors, numbers, strings, lists and dicts and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..checkpoint import read_checkpoint, save_checkpoint
from ..fileio import atomic_write
from ..errors import CheckpointError

__all__ = ["RunCheckpoint", "Checkpointer", "rng_state", "restore_rng_state"]

#: the epoch folders a run writes (``ep0001`` …, the trainer's ``ep{global_epoch:04d}``); only these are pruned
_EPOCH_DIR = re.compile(r"ep\d{4,}")


def rng_state(generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """The global torch RNG states (CPU, every CUDA device) and ``generator``'s, as uint8 tensors."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


@dataclass
class RunCheckpoint:
    """One loaded run checkpoint."""

    directory: Path
    model_state: Dict[str, torch.Tensor]
    model_meta: Dict[str, str]
    state: Dict[str, Any]


class Checkpointer:
    """Writes and finds the per-epoch checkpoints of one run directory. ``resume_command`` is the
    console command that continues such a run (named in the errors: ``repan-train``, ``repan-detect``)."""

    def __init__(self, out: Path, keep: int = 2, resume_command: str = "repan-train"):
        self.root = Path(out) / "checkpoints"
        self.keep = max(1, int(keep))
        self.resume_command = resume_command

    @property
    def pointer(self) -> Path:
        return self.root / "latest.json"

    def exists(self) -> bool:
        return self.pointer.is_file()

    def progress(self) -> Dict[str, Any]:
        """Where the run stands, as the pointer records it (``cycle_index``, ``cycle``, ``epoch``,
        ``epochs``, ``global_epoch``; see the trainer's state): ``{}`` when the run has no readable
        pointer yet. Reads only ``latest.json``, not the checkpoint."""
        try:
            progress = json.loads(self.pointer.read_text()).get("progress", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return progress if isinstance(progress, dict) else {}

    def _pointed_dir(self) -> Optional[Path]:
        """The folder ``latest.json`` names, or None when the pointer is unreadable (garbled,
        empty, a name outside the checkpoints folder) or names a folder that is not there."""
        try:
            info = json.loads(self.pointer.read_text())
            name = info["dir"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(name, str) or Path(name).name != name or not (self.root / name).is_dir():
            return None
        return self.root / name

    def _epoch_dirs(self):
        """Epoch folders holding both files, newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and _EPOCH_DIR.fullmatch(p.name)
                       and (p / "model.safetensors").is_file() and (p / "state.pt").is_file()), reverse=True)

    def latest_dir(self) -> Optional[Path]:
        """The folder of the last completed epoch: the one ``latest.json`` names; when the pointer
        is garbled, the newest epoch folder holding both files (:meth:`load` then verifies it)."""
        if not self.exists():
            return None
        folder = self._pointed_dir()
        if folder is not None:
            return folder
        newest = next(iter(self._epoch_dirs()), None)
        if newest is None:
            raise CheckpointError(f"{self.pointer} is unreadable and no epoch folder in {self.root} holds both "
                                  "model.safetensors and state.pt: nothing to resume. Start a new run (new --out)")
        warnings.warn(f"{self.pointer} is unreadable; resuming from the newest complete epoch folder {newest.name}")
        return newest

    def save(self, model: nn.Module, state: Dict[str, Any], *, tag: str, architecture: str,
             metadata: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``model`` + ``state`` into ``<root>/<tag>/`` and move the pointer to it.

        The pair is written into a fresh hidden folder and renamed into place whole, so a folder of
        that name (an epoch redone after a resume fell back past it) is replaced, never rewritten file
        by file. A failed write (disk full, I/O error) raises :class:`CheckpointError` naming the
        last checkpoint that reads, which is left untouched, and how to resume."""
        folder = self.root / tag
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_hidden()  # what a save killed mid-way left
        fresh = self._hidden(tag)
        try:
            save_checkpoint(model, fresh / "model.safetensors", architecture=architecture, metadata=metadata)
            atomic_write(fresh / "state.pt", lambda tmp: torch.save(state, tmp))
            if folder.exists():  # an older folder of that name goes aside first: a folder is renamed onto nothing
                os.replace(folder, self._hidden(tag) / tag)
            os.replace(fresh, folder)
            info = {"dir": tag, "progress": state.get("progress", {})}
            atomic_write(self.pointer, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            shutil.rmtree(fresh, ignore_errors=True)
            good = self._readable_dir()
            good = (f"the last checkpoint that reads is {good}" if good is not None
                    else "no earlier checkpoint reads")
            raise CheckpointError(
                f"writing the checkpoint {folder} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}); "
                f"{good}. Free disk space (or fix the I/O problem), then continue with "
                f"`{self.resume_command} --out {self.root.parent} --resume`"
            ) from exc
        self._remove_hidden()  # the folder of that name moved aside above
        self._prune(keep_tag=tag)
        return folder

    def _hidden(self, tag: str) -> Path:
        """A new empty folder ``<root>/.<tag>.<unique>.tmp`` (ignored by every reader, removed by the next save)."""
        folder = self.root / f".{tag}.{uuid.uuid4().hex[:12]}.tmp"
        folder.mkdir()
        return folder

    def _remove_hidden(self) -> None:
        """Remove every :meth:`_hidden` folder (this process is the run's only writer)."""
        for stale in self.root.glob(".ep*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def _readable_dir(self) -> Optional[Path]:
        """The folder :meth:`load` would resume from, or None (no checkpoint, or none reads)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                loaded = self.load()
            except CheckpointError:
                return None
        return loaded.directory if loaded is not None else None

    def _prune(self, keep_tag: str) -> None:
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and _EPOCH_DIR.fullmatch(p.name))
        stale = [p for p in folders if p.name != keep_tag][: max(0, len(folders) - self.keep)]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)

    def load(self) -> Optional[RunCheckpoint]:
        """The checkpoint ``latest.json`` points at, or None when the run has none yet. When its
        files do not read (truncated or damaged on disk after they were written), the newest older
        epoch folder whose files do, with a warning naming what was skipped and why; when none
        reads, :class:`CheckpointError` naming each folder's problem."""
        first = self.latest_dir()
        if first is None:
            return None
        problems = []
        for folder in [first] + [d for d in self._epoch_dirs() if d.name < first.name]:
            try:
                loaded = self._read(folder)
            except CheckpointError as exc:
                problems.append(f"{folder.name}: {exc}")
                continue
            if problems:
                warnings.warn(f"resuming from {folder.name}, the newest checkpoint of {self.root} that reads; "
                              f"skipped {'; '.join(problems)}")
            return loaded
        raise CheckpointError(f"no checkpoint of {self.root} reads ({'; '.join(problems)}): nothing to resume. "
                              "Start a new run (new --out)")

    @staticmethod
    def _read(folder: Path) -> RunCheckpoint:
        model_file, state_file = folder / "model.safetensors", folder / "state.pt"
        if not (model_file.is_file() and state_file.is_file()):
            raise CheckpointError(f"{folder} lacks model.safetensors or state.pt")
        model_state, meta = read_checkpoint(model_file)
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{state_file} is unreadable ({str(exc).splitlines()[0] if str(exc) else exc!r})") from exc
        return RunCheckpoint(folder, model_state, meta, state)
