"""timm registration of every ``repan_*`` model: ``@register_model`` entrypoints, ``default_cfgs``
(one ``name.tag`` cfg per weights-manifest entry), and the builder behind them.

``import repan_zoo`` registers them; then ``timm.create_model("repan_resnet50_dbb", ...)`` and
``timm.list_models("repan_*")`` work like for timm's own models (timm module name: ``repan``).

Keyword arguments of every ``repan_*`` entrypoint
--------------------------------------------------
timm's: ``pretrained``, ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``,
``drop_path_rate`` (residual families), ``features_only`` + ``out_indices`` (+ ``feature_cls``,
``feature_cfg``), ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``, ``device``, ``dtype``.
Ours:

``deploy``        build the fused (deploy) form: one conv per Rep block.
``width_mult``    channel multiplier (> 0) of the base widths (the paper's CIFAR models use 0.25).
``small_input``   layout for 28×28 / 32×32 inputs (:meth:`NetCfg.for_small_input`).
``branches``      extra branch kinds of every k×k Rep block (stem included), each kept where it
                  fits; train form only.
``zero_init_last`` zero the last BN γ of each residual branch (ResNet default True).
``output_stride`` timm's: 8, 16 (or any reduction the network reaches) dilate the later stages
                  instead of striding them (:meth:`NetCfg.stage_geometry`); the Rep blocks still fuse exactly.

``pretrained=True`` builds the model, then ``repan_zoo.hub.load_pretrained(model)`` downloads and
verifies the manifest's weights for ``pretrained_cfg['architecture'/'tag']`` and loads them
(deploy weights into either form), and only then is the model wrapped for ``features_only``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, list_pretrained, register_model, resolve_pretrained_cfg

from ..cli_types import check_values, number
from ..errors import ModelConfigError, UnknownModelArgError, UnknownTagError
from ..manifest import timm_cfgs
from .families import MODELS, ModelDef
from .layers import rep_conv
from .net import RepNet
from .timm_compat import checkpoint_filter
from ..recompute import FeatureListNet
from ..timm_private import pretrained_cfg_for_features

__all__ = ["create_repnet", "default_cfgs", "model_names", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

#: Fashion-MNIST training-set pixel statistics (in [0, 1]).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

#: kwargs the RepNet constructor takes (beside the config).
_MODEL_KWARGS = ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "deploy", "zero_init_last")
#: kwargs timm's build_model_with_cfg consumes itself.
_TIMM_KWARGS = (
    "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "out_indices", "feature_cls",
    "feature_cfg", "pretrained_model_args",
)
_ARCH_KWARGS = ("width_mult", "small_input", "branches")
_PLACEMENT_KWARGS = ("device", "dtype", "output_stride")


def model_names() -> Tuple[str, ...]:
    """Every registered ``repan_*`` architecture."""
    return tuple(MODELS)


def first_conv_names(mdef: ModelDef, in_chans: int) -> Tuple[str, ...]:
    """Train-form names of the convs that read the input image: the stem's trunk conv and the
    first conv of each of its extra branches (what timm adapts for another ``in_chans``)."""
    cfg = mdef.cfg
    stem = rep_conv(in_chans, cfg.stem_out, cfg.stem_kernel, cfg.stem_stride, branches=cfg.branches.stem_kinds)
    names = ["stem.conv.trunk.conv"]
    for i, branch in enumerate(stem.extras):
        conv = next((n for n, m in branch.named_modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:
            names.append(f"stem.conv.extras.{i}.{conv}")
    return tuple(names)


def base_cfg(name: str) -> Dict[str, Any]:
    """The default (pretrained) cfg of an architecture without manifest weights: ImageNet
    (3×224×224, 1000 classes) for full models, Fashion-MNIST (1×28×28, 10 classes) for ``_w025``."""
    mdef = MODELS[name]
    if mdef.small:
        input_size, num_classes, mean, std, crop_pct = (1, 28, 28), 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD, 1.0
    else:
        input_size, num_classes, mean, std, crop_pct = (3, 224, 224), 1000, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875
    pool = mdef.cfg.output_size(input_size[-1])
    first_conv = first_conv_names(mdef, input_size[0])
    return dict(
        url="",
        num_classes=num_classes,
        input_size=input_size,
        pool_size=(pool, pool),
        crop_pct=crop_pct,
        interpolation="bilinear",
        mean=mean,
        std=std,
        first_conv=first_conv[0] if len(first_conv) == 1 else first_conv,
        classifier="head.fc",
        license="apache-2.0",
        description=f"{mdef.description} built from RepBlocks (RepAn Zoo)",
        paper_name="RepAn: Enhanced Annealing through Re-parameterization (CVPR 2024)",
    )


def _all_cfgs() -> Dict[str, Dict[str, Any]]:
    cfgs: Dict[str, Dict[str, Any]] = {}
    for name in MODELS:
        cfgs.update(timm_cfgs(name, base_cfg(name)))
    return cfgs


default_cfgs = generate_default_cfgs(_all_cfgs())
for _dc in default_cfgs.values():
    # an untagged cfg is listed only when no manifest entry fits the architecture (manifest.timm_cfgs);
    # timm would promote the first tag with weights over it, so put it back in front
    if "" in _dc.tags and _dc.tags[0] != "":
        _dc.tags.remove("")
        _dc.tags.appendleft("")


# -- the builder -----------------------------------------------------------------------------
#: the numeric model kwargs and their ranges (what the layers can be built with)
_NUMERIC_KWARGS = {
    "in_chans": number(int, 1), "num_classes": number(int, 0),
    "drop_rate": number(float, 0.0, 1.0, hi_open=True), "drop_path_rate": number(float, 0.0, 1.0, hi_open=True),
}


def _check_kwargs(variant: str, kwargs: Dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(_MODEL_KWARGS + _ARCH_KWARGS + _PLACEMENT_KWARGS + _TIMM_KWARGS))
    if unknown:
        raise UnknownModelArgError(
            f"{variant} got unexpected keyword argument(s) {unknown}; repan_* models take "
            f"{sorted(_MODEL_KWARGS + _ARCH_KWARGS)}, {list(_PLACEMENT_KWARGS)} and timm's {sorted(_TIMM_KWARGS)}"
        )
    # e.g. in_chans=0 built a net no input fits
    check_values(kwargs, _NUMERIC_KWARGS, lambda msg: ModelConfigError(f"{variant}: {msg}"))


def _resolve_cfg(variant: str, mdef: ModelDef, kwargs: Dict[str, Any]):
    cfg = mdef.cfg
    width_mult = kwargs.pop("width_mult", None)
    small_input = kwargs.pop("small_input", None)
    branches = kwargs.pop("branches", None)
    if width_mult is not None:
        try:
            ok = math.isfinite(float(width_mult)) and float(width_mult) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelConfigError(f"{variant}: width_mult={width_mult!r} must be a finite number > 0 (e.g. 0.25)")
        if mdef.small and float(width_mult) != cfg.width_mult:
            base = variant.rsplit("_w", 1)[0]
            raise ModelConfigError(
                f"{variant} is fixed at width_mult={cfg.width_mult}; for another width use "
                f"timm.create_model({base!r}, width_mult={width_mult}, small_input=True)"
            )
        cfg = cfg.with_width(float(width_mult))
    if small_input is not None:
        if not isinstance(small_input, bool):
            raise ModelConfigError(f"{variant}: small_input must be True or False, got {small_input!r}")
        if mdef.small and not small_input:
            raise ModelConfigError(f"{variant} is the small-input layout by definition; drop small_input=False")
        if small_input and not mdef.small:
            cfg = cfg.for_small_input()
    if branches is not None:
        if kwargs.get("deploy", False):
            raise ModelConfigError(
                f"{variant}: deploy=True builds fused single-conv blocks, so branches={tuple(branches)!r} has nothing "
                "to shape; build the train form with branches=..., train, then repan_zoo.reparameterize(model)"
            )
        if isinstance(branches, str):
            branches = (branches,)
        cfg = cfg.with_kxk_branches(tuple(branches))
    output_stride = kwargs.pop("output_stride", None)
    if output_stride is not None:
        try:
            cfg = cfg.with_output_stride(output_stride)
        except ModelConfigError as exc:
            raise ModelConfigError(f"{variant}: {exc}") from None
    if kwargs.get("drop_path_rate", 0.0) and not cfg.has_residual_blocks:
        raise ModelConfigError(
            f"{variant}: drop_path_rate={kwargs['drop_path_rate']} needs residual branches to drop, and "
            f"{cfg.family} is a plain chain of Rep convs; use drop_rate= (classifier dropout) instead"
        )
    return cfg


def _construct(
    cfg,
    *,
    load_pretrained: bool,
    pretrained_cfg: Dict[str, Any],
    user_cfgs: Tuple[Any, ...] = (),
    loaded_cfgs: Optional[List[Dict[str, Any]]] = None,
    features_only: bool = False,
    cache_dir=None,
    device=None,
    dtype=None,
    **kwargs,
) -> RepNet:
    """Model factory handed to timm's ``build_model_with_cfg``: build the full classifier, load
    published weights into it (or the user's own: ``user_cfgs`` = the caller's ``pretrained_cfg`` and
    ``pretrained_cfg_overlay``, whose ``file`` / ``url`` / ``hf_hub_id`` win), append the cfg of the
    loaded weights to ``loaded_cfgs``, and return the model for timm to wrap (``features_only``)."""
    model = RepNet(cfg, device=device, dtype=dtype, **kwargs)
    if load_pretrained:
        model.pretrained_cfg = model.default_cfg = pretrained_cfg
        load_kwargs: Dict[str, Any] = {}
        user = {k: v for c in user_cfgs if isinstance(c, Mapping) for k, v in c.items()}
        if user:  # the hub picks the file / url / hf_hub_id out of it
            load_kwargs["user"] = user
        if cache_dir is not None:
            load_kwargs["cache_dir"] = cache_dir
        if features_only:  # timm's rule: a features model loads no classifier
            load_kwargs["features_only"] = True
        _hub_load_pretrained()(model, **load_kwargs)
        if loaded_cfgs is not None:
            loaded_cfgs.append(model.pretrained_cfg)
    return model


def _hub_load_pretrained() -> Callable[..., Any]:
    """``repan_zoo.hub.load_pretrained`` (imported on first use: the hub depends on the models, not back)."""
    try:
        from ..hub import load_pretrained
    except ImportError as exc:
        raise ModelConfigError(
            f"pretrained=True needs repan_zoo.hub, which failed to import ({exc}); reinstall repan-zoo, or build "
            "with pretrained=False and load a checkpoint with repan_zoo.checkpoint.load_into"
        ) from exc
    return load_pretrained


def check_pretrained_tag(arch: str, tag: str, what: str = "model") -> None:
    """Refuse ``<arch>.<tag>`` when ``arch`` has no pretrained config of that tag (``timm.create_model``
    and the CLIs both come here).

    Raises:
        UnknownTagError: the message lists the tags ``arch`` has (``available``)."""
    tags = [n.partition(".")[2] for n in list_pretrained(f"{arch}.*")]
    if tag not in tags:
        raise UnknownTagError(
            f"{what} {arch + '.' + tag!r}: {arch} has no pretrained tag {tag!r}; tags it has: {', '.join(tags) or 'none'} "
            f"(write {arch}.<tag>, or {arch} for the default)", model=arch, available=tags)


def _with_tag(cfg: Dict[str, Any]) -> Dict[str, Any]:
    cfg.setdefault("tag", None)  # timm drops a None tag; the hub reads it (None: no published weights)
    return cfg


def create_repnet(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered ``repan_*`` model (what every entrypoint calls); see the module docstring."""
    mdef = MODELS[variant]
    _check_kwargs(variant, kwargs)
    cfg = _resolve_cfg(variant, mdef, kwargs)
    if isinstance(kwargs.get("pretrained_cfg"), str):  # the tag of "<model>.<tag>" (timm passes it so)
        check_pretrained_tag(variant, kwargs["pretrained_cfg"])
    resolved = _with_tag(
        resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")).to_dict()
    )
    feature_cfg = dict(flatten_sequential=True, out_indices=tuple(range(len(cfg.feature_levels()))))
    feature_cfg.update(kwargs.pop("feature_cfg", None) or {})
    if kwargs.get("feature_cls", "list") in ("list", None):  # timm's default wrapper, BN-safe checkpointing
        kwargs.pop("feature_cls", None)
        feature_cfg.setdefault("feature_cls", FeatureListNet)
    loaded_cfgs: List[Dict[str, Any]] = []
    factory = partial(
        _construct, loaded_cfgs=loaded_cfgs, load_pretrained=bool(pretrained), pretrained_cfg=resolved, cache_dir=kwargs.get("cache_dir"),
        user_cfgs=(kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")),
        features_only=bool(kwargs.get("features_only", False)),
    )
    model = build_model_with_cfg(
        factory,
        variant,
        pretrained=False,  # weights come from repan_zoo.hub inside the factory, before any features wrapper
        model_cfg=cfg,
        feature_cfg=feature_cfg,
        pretrained_filter_fn=checkpoint_filter,
        **kwargs,
    )
    if loaded_cfgs:  # timm set the requested cfg again after our factory: describe the loaded weights
        loaded = loaded_cfgs[-1]
        features = kwargs.get("features_only", False)
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(loaded) if features else dict(loaded)
    _with_tag(model.pretrained_cfg)
    return model


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return create_repnet(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{MODELS[name].description} (repan_zoo). Keyword arguments: see repan_zoo.models.repan."
    return entrypoint


for _name in MODELS:
    globals()[_name] = register_model(_entrypoint(_name))
    __all__.append(_name)
del _name
