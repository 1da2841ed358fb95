"""The optional extras of ``setup.cfg`` and the one error for a missing one.

``pip install repan-zoo`` gives models, fusion, the Hub and training. ONNX export, COCO detection
and INT8 quantization need packages that only their extra installs (``[options.extras_require]``);
a function that needs one calls :func:`require_extra` first, so a user without it gets
:class:`~repan_zoo.errors.MissingExtraError` naming the package and the ``pip install`` that
provides it, before any work is done or any file is written, instead of a bare ``ImportError``
from deep inside the call.
"""
from __future__ import annotations

import importlib
from typing import Dict, Optional, Sequence, Tuple

from .errors import MissingExtraError

__all__ = ["EXTRAS", "require_extra", "missing_extra"]

#: extra name → the modules it provides (setup.cfg ``[options.extras_require]``)
EXTRAS: Dict[str, Tuple[str, ...]] = {
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "detection": ("pycocotools",),
    "quant": ("torchao",),
}


def missing_extra(extra: str, purpose: str, module: str, exc: Optional[BaseException] = None) -> MissingExtraError:
    """The error for ``purpose`` (e.g. ``"ONNX export"``) lacking ``module`` of ``extra``."""
    why = f" ({exc})" if exc is not None else ""
    return MissingExtraError(
        f"{purpose} needs {module}, which is not installed{why}. Install the extra: pip install 'repan-zoo[{extra}]'"
    )


def require_extra(extra: str, purpose: str, modules: Optional[Sequence[str]] = None) -> None:
    """Import each of ``modules`` (default: all of ``extra``'s, :data:`EXTRAS`); raise
    :class:`~repan_zoo.errors.MissingExtraError` naming the first that cannot be imported, what
    needed it (``purpose``) and ``pip install 'repan-zoo[<extra>]'``. ``ValueError`` for an extra
    that setup.cfg does not declare."""
    if extra not in EXTRAS:
        raise ValueError(f"extra {extra!r}: setup.cfg declares {sorted(EXTRAS)}")
    for module in EXTRAS[extra] if modules is None else modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise missing_extra(extra, purpose, module, exc) from exc
