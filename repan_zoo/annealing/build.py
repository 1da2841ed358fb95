"""The models of a classification run: the student (any timm model, the zoo's registered) and
the software versions a run records."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..errors import RecipeError

__all__ = ["build_model", "versions"]


def build_model(name: str, *, num_classes: int, in_chans: int, model_kwargs: Optional[Dict[str, Any]] = None,
                deploy: bool = False, pretrained: bool = False, option: str = "--model") -> nn.Module:
    """``timm.create_model(name, pretrained=..., num_classes=..., in_chans=..., **model_kwargs)``
    (+ ``deploy=True``).

    Raises:
        RecipeError: ``name`` is not a timm model (the message names ``option``, e.g. ``--teacher``,
            and lists the zoo's models). Any other failure of timm (a download, a size mismatch)
            propagates as it is.
    """
    import timm

    from .. import models  # noqa: F401  (registers the zoo's repan_* models with timm)

    kwargs = dict(model_kwargs or {})
    if deploy:
        kwargs["deploy"] = True
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise RecipeError(
                f"{option} {name!r} is not a timm model; the zoo's models: {timm.list_models('repan_*')}"
            ) from exc
        raise


def versions() -> Dict[str, str]:
    """Versions of repan_zoo, torch, timm and Python (recorded in ``final.json``)."""
    import platform

    import timm

    from .. import __version__

    return {"repan_zoo": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}
