"""A RepAn backbone with a feature pyramid, for torchvision's detectors.

The backbone body is any ``repan_*`` timm model built with ``features_only=True`` (a timm
``FeatureListNet`` whose ``feature_info`` gives each level's channels and reduction); the
pyramid is torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`. Every Rep block of
the body stays a :class:`~repan_zoo.blocks.RepBlock`, so ``repan_zoo.unfold`` /
``repan_zoo.reparameterize`` convert the whole detector in one call.

An FPN adds each level to the 2× upsampled level above it, and torchvision's
``MultiScaleRoIAlign`` assigns a box to level ``log2(stride)``: the chosen levels must have
strides that are powers of two, each twice the previous one. :func:`check_feature_strides`
refuses other layouts with a :class:`~repan_zoo.errors.FeatureStrideError`, and
:func:`measure_strides` checks the strides that ``feature_info`` claims on a real forward.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from ..recompute import FeatureListNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..checkpoint import load_into, read_checkpoint, state_dict_form
from ..errors import CheckpointError, FeatureStrideError
from ..verify import eval_mode, weights_device_dtype

__all__ = [
    "EXTRA_LEVELS",
    "RepanFPNBackbone",
    "check_feature_strides",
    "measure_strides",
    "default_out_indices",
    "create_body",
    "body_in_chans",
]

#: extra pyramid levels above the body's last one: ``maxpool`` (Faster R-CNN's "pool" level),
#: ``p6p7`` (RetinaNet's P6, P7 from P5), ``none``.
EXTRA_LEVELS = ("maxpool", "p6p7", "none")


def _is_power_of_two(value: Any) -> bool:
    return isinstance(value, int) and value >= 1 and value & (value - 1) == 0


def check_feature_strides(reductions: Sequence[Any], *, min_levels: int = 2, what: str = "backbone",
                          out_indices: Optional[Sequence[int]] = None) -> List[int]:
    """Check that feature levels of strides ``reductions`` can feed an FPN; returns them as ints.

    Raises :class:`FeatureStrideError` when there are fewer than ``min_levels`` levels, when a
    stride is not a power of two, or when a level's stride is not twice the previous one
    (non-increasing strides, or a skipped level).
    """
    strides = list(reductions)
    chosen = f" (out_indices={tuple(out_indices)})" if out_indices is not None else ""
    if len(strides) < min_levels:
        raise FeatureStrideError(
            f"{what} gives {len(strides)} feature level(s){chosen} with strides {strides}, but a feature "
            f"pyramid needs at least {min_levels}: pass out_indices with {min_levels} or more consecutive "
            "levels, e.g. the last three (the default)"
        )
    for i, s in enumerate(strides):
        if not _is_power_of_two(s):
            raise FeatureStrideError(
                f"{what}: feature level {i}{chosen} has stride {s!r}, not a power of two; an FPN upsamples by 2 "
                "between levels and MultiScaleRoIAlign maps boxes to level log2(stride). Choose levels whose "
                "feature_info reductions are powers of two"
            )
    for i in range(1, len(strides)):
        if strides[i] != 2 * strides[i - 1]:
            kind = "does not increase" if strides[i] <= strides[i - 1] else "skips a level"
            raise FeatureStrideError(
                f"{what}: strides {strides}{chosen} {kind} at level {i} ({strides[i - 1]} → {strides[i]}); each "
                "FPN level must have twice the stride of the one below it. Pick consecutive out_indices in "
                "increasing order whose reductions double (see model.feature_info.reduction())"
            )
    return [int(s) for s in strides]


@torch.no_grad()
def measure_strides(body: nn.Module, in_chans: int) -> List[int]:
    """The strides of ``body``'s feature maps, measured on one zero image whose side is twice the
    largest declared reduction; raises :class:`FeatureStrideError` when a map's size disagrees with
    ``feature_info``. Runs in eval mode and keeps every module's train/eval flag."""
    declared = list(body.feature_info.reduction())
    side = 2 * max(int(r) for r in declared)
    device, dtype = weights_device_dtype(body)
    x = torch.zeros(1, in_chans, side, side, device=device, dtype=dtype)
    with eval_mode(body):
        maps = body(x)
    measured = []
    for i, (m, r) in enumerate(zip(maps, declared)):
        h, w = m.shape[-2:]
        if h * r != side or w * r != side:
            names = body.feature_info.module_name()
            raise FeatureStrideError(
                f"feature level {i} ({names[i]!r}) declares reduction {r}, but a {side}×{side} input gives a "
                f"{h}×{w} map (stride {side / h:g}); the model's feature_info is wrong, report it to the model's author"
            )
        measured.append(side // h)
    return measured


def default_out_indices(num_levels: int) -> Tuple[int, ...]:
    """The last three feature levels (C3–C5 of a 5-level model), or all when there are fewer."""
    return tuple(range(max(0, num_levels - 3), num_levels))


def body_in_chans(body: nn.Module) -> int:
    """Input channels of a backbone: those of its first convolution."""
    conv = next((m for m in body.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise FeatureStrideError(f"{type(body).__name__} has no Conv2d: it is not an image backbone")
    return conv.in_channels


class RepanFPNBackbone(nn.Module):
    """``body`` (timm ``features_only`` model) → torchvision ``FeaturePyramidNetwork``.

    ``forward(images)`` returns an ordered ``Dict[str, Tensor]`` of ``fpn_channels`` maps: the
    body's levels named ``"0", "1", ...`` then the extra levels (``"pool"`` or ``"p6", "p7"``),
    which is what torchvision's ``FasterRCNN`` / ``RetinaNet`` expect of a backbone
    (``out_channels`` attribute included). ``strides`` lists each output level's stride and
    ``level_names`` their keys; ``body_level_names`` are the levels RoI pooling may use.
    """

    def __init__(self, body: nn.Module, fpn_channels: int = 64, extra: str = "maxpool", *, min_levels: int = 2,
                 what: str = "backbone", check: bool = True):
        super().__init__()
        info = getattr(body, "feature_info", None)
        if info is None or not hasattr(info, "reduction"):
            raise FeatureStrideError(
                f"{type(body).__name__} has no timm feature_info; build it with "
                "timm.create_model(name, features_only=True, out_indices=...)"
            )
        if extra not in EXTRA_LEVELS:
            raise ValueError(f"extra={extra!r}: choose one of {EXTRA_LEVELS}")
        if fpn_channels < 1:
            raise ValueError(f"fpn_channels={fpn_channels} must be ≥ 1")
        strides = check_feature_strides(list(info.reduction()), min_levels=min_levels, what=what,
                                        out_indices=getattr(info, "out_indices", None))
        self.in_chans = body_in_chans(body)
        if check:
            measure_strides(body, self.in_chans)
        channels = [int(c) for c in info.channels()]
        extra_block: Optional[nn.Module]
        if extra == "maxpool":
            extra_block, extra_names = LastLevelMaxPool(), ["pool"]
        elif extra == "p6p7":
            extra_block, extra_names = LastLevelP6P7(fpn_channels, fpn_channels), ["p6", "p7"]
        else:
            extra_block, extra_names = None, []
        self.body = body
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra_block)
        self.out_channels = fpn_channels
        self.in_channels_list = channels
        self.body_level_names: List[str] = [str(i) for i in range(len(strides))]
        self.level_names: List[str] = self.body_level_names + extra_names
        self.strides: List[int] = strides + [strides[-1] * 2 ** (i + 1) for i in range(len(extra_names))]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.body(x)
        levels: Dict[str, torch.Tensor] = OrderedDict()
        for name, f in zip(self.body_level_names, feats):
            levels[name] = f
        return self.fpn(levels)


def create_body(
    name: str,
    *,
    out_indices: Optional[Sequence[int]] = None,
    checkpoint: Optional[Union[str, Path]] = None,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """A ``features_only`` repan backbone.

    Without ``checkpoint``: ``timm.create_model(name, features_only=True, out_indices=...,
    pretrained=pretrained, **model_kwargs)`` (``pretrained=True`` loads the hub's weights).
    With ``checkpoint`` (a typed safetensors file of the whole classifier, e.g. the trainer's
    ``deploy.safetensors``): the classifier is built in the checkpoint's form, with its
    ``in_chans``, ``num_classes`` and ``model_kwargs`` (read from the tensors and the recipe in
    the metadata; ``model_kwargs`` given here win), loaded strictly
    (:func:`repan_zoo.checkpoint.load_into`) and then wrapped by timm's ``FeatureListNet``, as
    ``features_only=True`` would. ``out_indices`` default: :func:`default_out_indices`.
    """
    import repan_zoo.models  # noqa: F401  (registers the repan_* models)

    if checkpoint is None:
        levels = len(timm.create_model(name, features_only=True, device="meta", **model_kwargs).feature_info.info)
        out_indices = default_out_indices(levels) if out_indices is None else _check_out_indices(out_indices, levels)
        return timm.create_model(name, features_only=True, out_indices=tuple(out_indices), pretrained=pretrained,
                                 **model_kwargs)
    if pretrained:
        raise ValueError("give either pretrained=True (hub weights) or checkpoint=PATH, not both")
    state, meta = read_checkpoint(checkpoint)
    arch = meta.get("architecture")
    if arch and arch in timm.list_models("repan_*") and arch != name:
        raise CheckpointError(f"{checkpoint} holds weights of {arch!r}, not {name!r}: pass --backbone {arch}")
    kwargs = dict(_recipe_model_kwargs(meta))
    kwargs.update(model_kwargs)
    kwargs.update(_shape_kwargs(state, kwargs))
    form = meta.get("form") or state_dict_form(state)
    if form == "deploy":
        kwargs["deploy"] = True
    model = timm.create_model(name, **kwargs)
    load_into(model, state, meta, what=str(checkpoint))
    if out_indices is None:
        out_indices = default_out_indices(len(model.feature_info))
    return _features(model, out_indices)


def _recipe_model_kwargs(meta: Dict[str, str]) -> Dict[str, Any]:
    """``model_kwargs`` of the training recipe stored in a checkpoint's metadata (trainer output)."""
    try:
        recipe = json.loads(meta.get("recipe", "{}"))
    except ValueError:
        return {}
    kwargs = recipe.get("model_kwargs") if isinstance(recipe, dict) else None
    return dict(kwargs) if isinstance(kwargs, dict) else {}


def _shape_kwargs(state: Dict[str, torch.Tensor], given: Dict[str, Any]) -> Dict[str, Any]:
    """``in_chans`` and ``num_classes`` read from the checkpoint's tensors (stem conv, classifier)."""
    out: Dict[str, Any] = {}
    if "in_chans" not in given:
        for key in ("stem.conv.reparam_conv.weight", "stem.conv.trunk.conv.weight"):
            if key in state:
                out["in_chans"] = int(state[key].shape[1])
                break
    if "num_classes" not in given:
        fc = state.get("head.fc.weight")
        out["num_classes"] = int(fc.shape[0]) if fc is not None else 0
    return out


def _check_out_indices(out_indices: Sequence[int], n: int) -> Tuple[int, ...]:
    """``out_indices`` as a tuple, each a level of a backbone with ``n`` feature levels (negative:
    from the end, as timm's); :class:`FeatureStrideError` naming the others."""
    bad = [i for i in out_indices if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise FeatureStrideError(f"out_indices {tuple(out_indices)}: {bad} out of range for {n} feature levels "
                                 f"(0..{n - 1}, or negative from the end)")
    return tuple(out_indices)


def _features(model: nn.Module, out_indices: Sequence[int]) -> nn.Module:
    """Wrap a built (and loaded) classifier like timm's ``features_only=True`` does."""
    from ..timm_private import pretrained_cfg_for_features

    out_indices = _check_out_indices(out_indices, len(model.feature_info))
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    body = FeatureListNet(model, out_indices=tuple(out_indices), flatten_sequential=True)
    body.pretrained_cfg = body.default_cfg = pretrained_cfg_for_features(cfg)
    return body
