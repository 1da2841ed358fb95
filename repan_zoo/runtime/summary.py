"""The typed summary of a finished classification run: what ``final.json`` holds.

The trainer (:meth:`repan_zoo.annealing.RepAnTrainer.finish`) builds a :class:`RunSummary` and
writes :meth:`RunSummary.as_dict`; readers — publishing (:mod:`repan_zoo.hub.publish`), the
accuracy sweep's tools — get the fields back with :meth:`RunSummary.read`, checked, instead of
reaching into the JSON by key.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..errors import RepanError
from ..jsonio import is_number

__all__ = ["RunSummary", "SummaryError"]


class SummaryError(RepanError, ValueError):
    """A ``final.json`` that is not a run summary (a missing or mistyped field); the message names it."""


@dataclass
class RunSummary:
    """A finished run (``final.json``).

    Attributes:
        model: timm model name; ``create_kwargs`` rebuild it (``num_classes``, ``in_chans``, …).
        method: ``baseline`` | ``kd`` | ``repan``; ``recipe``: the flat ``TrainConfig.as_dict()``.
        data: the splits' description (``dataset``, sizes, ``input_size``, ``mean``, ``std``, augmentation).
        val_top1, test_top1: top-1 (%) of the deploy network; ``val_loss``, ``test_loss``: mean cross-entropy.
        exactness: the last Rep's certificate (``model_rel_error``, ``tolerance``, ``probe`` …).
        teacher: the KD teacher by name and content sha256 (None without KD).
        init: the weights Alg. 1 line 1 started from (``--init-checkpoint``) by content sha256 and,
            where the zoo ships them, manifest name ``model.tag`` (None: a fresh initialisation).
        cycles: the driver's log of every Rep / Expand+Restore / Calibrate.
        checkpoint, reload_check: the written deploy file (name, sha256, size) and its reload check.
        resumed_with: recipe changes made when the run was resumed (``{"after_epoch", "overrides"}``
            each, in order; ``recipe`` is the last part's recipe); absent from the JSON when none.
    """

    model: str
    create_kwargs: Dict[str, Any]
    method: str
    recipe: Dict[str, Any]
    data: Dict[str, Any]
    val_top1: float
    test_top1: float
    exactness: Dict[str, Any]
    val_loss: Optional[float] = None
    test_loss: Optional[float] = None
    teacher: Optional[Dict[str, Any]] = None
    init: Optional[Dict[str, Any]] = None
    world_size: int = 1
    device: str = "cpu"
    epochs_trained: int = 0
    cycles: List[Dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    versions: Dict[str, str] = field(default_factory=dict)
    checkpoint: Optional[Dict[str, Any]] = None
    reload_check: Optional[Dict[str, Any]] = None
    resumed_with: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def dataset(self) -> Optional[str]:
        return self.data.get("dataset") or self.recipe.get("dataset")

    def as_dict(self) -> Dict[str, Any]:
        """The JSON form (fields in declaration order; ``checkpoint`` / ``reload_check`` only once
        written, ``resumed_with`` only when the recipe changed on a resume)."""
        d = dataclasses.asdict(self)
        for key in ("checkpoint", "reload_check", "resumed_with"):
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "final.json") -> "RunSummary":
        """Check and type ``d``. Raises :class:`SummaryError` naming the first bad field."""
        if not isinstance(d, Mapping):
            raise SummaryError(f"{where} must hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise SummaryError(f"{where} is not a run summary: missing {missing}")
        for key in ("val_top1", "test_top1"):
            if not is_number(d[key]):
                raise SummaryError(f"{where}: {key} must be a number, got {d[key]!r}")
        for key in ("create_kwargs", "recipe", "data", "exactness"):
            if not isinstance(d[key], Mapping):
                raise SummaryError(f"{where}: {key} must be an object, got {type(d[key]).__name__}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def is_summary(cls, d: Any) -> bool:
        """True for a mapping that carries the trainer's summary fields (``method``, ``versions`` …)."""
        return isinstance(d, Mapping) and {"model", "method", "recipe", "versions"} <= set(d)

    @classmethod
    def read(cls, path: Union[str, Path]) -> "RunSummary":
        """Load ``final.json``. Raises :class:`SummaryError` (not JSON, not a summary)."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SummaryError(f"{path}: cannot read a run summary ({exc})") from exc
        return cls.from_dict(doc, where=str(path))
