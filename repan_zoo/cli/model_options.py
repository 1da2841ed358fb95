"""How ``repan export``, ``profile`` and ``verify`` name and build a model: the shared model
options and :func:`create_model` (``timm.create_model`` once ``repan_zoo.models`` registered the
``repan_*`` families; ``--checkpoint`` loaded strictly, in either form)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..cli_types import json_dict, number

__all__ = ["MODEL_PREFIX", "list_models", "create_model", "add_model_options", "model_from_args"]

MODEL_PREFIX = "repan_"


def list_models(pattern: str = MODEL_PREFIX + "*", pretrained: bool = False) -> List[str]:
    """Registered ``repan_*`` model names.

    Args:
        pattern: a timm wildcard, e.g. ``repan_repvgg_*``.
        pretrained: only names with published weights (``name.tag``).

    Returns:
        The matching names, sorted as timm lists them.
    """
    import timm

    from .. import models  # noqa: F401  (registers the repan_* families with timm)

    return [name for name in timm.list_models(pattern, pretrained=pretrained) if name.startswith(MODEL_PREFIX)]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    input_size: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
    model_args: Sequence[str] = (),
    model_kwargs: Optional[Mapping[str, Any]] = None,
):
    """``timm.create_model(name, ...)`` with the command line's options, in eval mode.

    Args:
        name: a registered model name (``MODEL`` or ``MODEL.TAG``), ``hf-hub:ORG/REPO`` or ``local-dir:``.
        pretrained: load the published weights (hub, sha256-checked).
        checkpoint: a typed safetensors file, loaded strictly (train or deploy form, converted exactly).
        input_size: ``(C, H, W)``; sets ``in_chans=C``.
        num_classes: classifier size.
        model_args: ``KEY=VALUE`` keywords (VALUE parsed as JSON when it can be); they win over ``model_kwargs``.
        model_kwargs: more ``timm.create_model`` keywords.

    Returns:
        The model, in eval mode.

    Raises:
        ModelConfigError: a malformed ``model_args`` item.
        UnknownModelError: ``name`` is not registered (the message lists the repan models).
        UnknownTagError, WeightsError: no such pretrained tag / weights that cannot be provided.
        CheckpointError: ``checkpoint`` does not fit the model.
    """
    import timm

    from .. import models  # noqa: F401  (registers the repan_* families with timm)
    from ..checkpoint import load_into, read_checkpoint
    from ..cli_types import check_model_name
    from ..errors import ModelConfigError

    kwargs: Dict[str, Any] = dict(model_kwargs or {})
    for item in model_args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelConfigError(f"--model-arg {item!r}: write KEY=VALUE, e.g. --model-arg drop_rate=0.1")
        kwargs[key] = _parse_value(value)
    if input_size is not None:
        kwargs.setdefault("in_chans", int(input_size[0]))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    check_model_name(name)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Hub errors of timm's own hf-hub: fetch become ours
        from ..hub.download import translate_hub_error

        mapped = translate_hub_error(exc, name) if name.startswith("hf-hub:") else exc
        if mapped is exc:
            raise
        raise mapped from exc
    if checkpoint:
        state_dict, metadata = read_checkpoint(checkpoint)
        load_into(model, state_dict, metadata, what=checkpoint)
    return model.eval()


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Add ``MODEL`` and the options that build it (:func:`model_from_args` reads them)."""
    p.add_argument("model", help="model name, e.g. repan_repvgg_a0 (see `repan list`)")
    p.add_argument("--checkpoint", metavar="FILE", help="typed safetensors checkpoint (train or deploy form)")
    p.add_argument("--pretrained", action="store_true", help="load the published weights (hub, sha256-checked)")
    p.add_argument("--input-size", nargs=3, type=number(int, 1), metavar=("C", "H", "W"),
                   help="input channels, height, width (default: the model's pretrained_cfg)")
    p.add_argument("--num-classes", type=number(int, 0), help="classifier size (must match --checkpoint)")
    p.add_argument("--model-kwargs", type=json_dict, default={},
                   help="JSON kwargs for timm.create_model, e.g. '{\"width_mult\": 0.25}'")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model keyword (VALUE parsed as JSON when it can be); repeatable")


def model_from_args(args: argparse.Namespace):
    """The model :func:`add_model_options`' options describe (:func:`create_model`)."""
    return create_model(
        args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, input_size=args.input_size,
        num_classes=args.num_classes, model_args=args.model_arg, model_kwargs=args.model_kwargs,
    )


def weights_of(args: argparse.Namespace, model) -> Dict[str, Any]:
    """Which weights the model :func:`model_from_args` built holds, for a report: ``{"source":
    "checkpoint", "path": ...}``, ``{"source": "pretrained", "pretrained": <model.repan_weights: name,
    file, sha256 …>}``, or ``{"source": "random init"}``."""
    if args.checkpoint:
        return {"source": "checkpoint", "path": str(args.checkpoint)}
    if args.pretrained:
        return {"source": "pretrained", "pretrained": dict(getattr(model, "repan_weights", None) or {})}
    return {"source": "random init"}

