"""Load timm's own weights into ``repan_*`` models: :func:`checkpoint_filter` (a timm ``filter_fn``).

It maps state dicts of timm's ``repvgg_*`` and ``mobileone_*`` (``ByobNet``: train form, or the
form ``timm.utils.reparameterize_model`` leaves) and ``resnet*`` to our key names, and then to
the *form* of the target model, block by block:

* same branch structure and form: the tensors are renamed only;
* any other combination goes through a temporary :class:`RepBlock` of the source's structure:
  fused (Eq. 1, 2) for a deploy target, or fused and unfolded into the target's branches
  (``restore="inherit"``, new branches with BN γ = 0, Algorithm 1 lines 4–5) for a train
  target — e.g. timm's ``resnet18`` weights start ``repan_resnet18_dbb`` with the same function.

The architectures match timm's exactly (stem, strides, widths, SE, head), so outputs agree to
fp32 rounding. Usage::

    ours = timm.create_model("repan_repvgg_a0")
    ours.load_state_dict(checkpoint_filter(timm.create_model("repvgg_a0", pretrained=True).state_dict(), ours))
    # or: timm.models.load_checkpoint(ours, path, filter_fn=checkpoint_filter)

Our own state dicts pass through (converted to the model's form when they hold the other form).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..blocks import RepBlock, rep_blocks
from ..blocks.rep_block import convert_block_state
from ..checkpoint import strict_load, strip_wrapper_prefixes
from ..errors import CheckpointError

__all__ = ["checkpoint_filter", "detect_source", "map_timm_byobnet", "map_timm_resnet", "adapt_input_kernel"]

_BYOB_BRANCH = re.compile(r"^(stem|stages\.\d+\.\d+)\.(conv_kxk|conv_1x1|conv_scale|identity|reparam_conv|attn)\.(.+)$")
_BN_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RESNET_STEM = re.compile(r"^(conv1)\.(weight)$|^(bn1)\." + _BN_PARAM + "$")
_RESNET_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(?:(conv)(\d)\.(weight)|(bn)(\d)\." + _BN_PARAM + ")$")
_RESNET_DOWN = re.compile(r"^layer(\d+)\.(\d+)\.downsample\.(?:(0)\.(weight)|(1)\." + _BN_PARAM + ")$")

Kinds = Optional[Tuple[str, ...]]  # a block's extra branch kinds in the source; None: deploy form


def _unwrap(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "state_dict_ema"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    return strip_wrapper_prefixes(state_dict)


def detect_source(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"timm_byobnet"`` (repvgg_* / mobileone_*), ``"timm_resnet"`` or ``"repan"``."""
    keys = list(state_dict)
    if any(k.startswith("layer1.") for k in keys):  # our keys never start with "layer"
        return "timm_resnet"
    if any(_BYOB_BRANCH.match(k) for k in keys if ".attn." not in k):  # our SE keys look the same
        return "timm_byobnet"
    return "repan"


def map_timm_byobnet(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Kinds]]:
    """timm ``ByobNet`` RepVGG / MobileOne keys → ours, and each block's source branch kinds.

    Per block ``P``: ``conv_kxk[.0]`` → ``P.conv.trunk``; ``conv_kxk.b`` (b ≥ 1) → ``extras`` in
    order; the 1×1 ``conv_1x1`` / ``conv_scale`` → next extra; ``identity`` (a BN) → last extra's
    ``bn``; ``reparam_conv`` → ``P.conv.reparam_conv``; ``attn`` (SE) → ``P.attn``.
    """
    parts: Dict[str, Dict[str, Dict[str, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _BYOB_BRANCH.match(key)
        if m is None:
            out[key] = value  # head.fc.* and anything else shared
            continue
        block, branch, rest = m.groups()
        if branch == "conv_kxk" and re.match(r"^\d+\.", rest):  # MobileOne: conv_kxk.<b>.<...>
            index, rest = rest.split(".", 1)
            branch = f"conv_kxk.{index}"
        elif branch == "conv_kxk":
            branch = "conv_kxk.0"
        parts[block][branch][rest] = value
    kinds: Dict[str, Kinds] = {}
    for block, branches in parts.items():
        prefix = f"{block}.conv."
        for rest, value in branches.pop("attn", {}).items():
            out[f"{block}.attn.{rest}"] = value
        if "reparam_conv" in branches:
            for rest, value in branches.pop("reparam_conv").items():
                out[prefix + "reparam_conv." + rest] = value
            kinds[block] = None
            if branches:
                raise CheckpointError(
                    f"timm block {block!r} holds both a fused reparam_conv and branches {sorted(branches)}: "
                    "a half-converted state dict; save it again after timm.utils.reparameterize_model(model)"
                )
            continue
        n_conv = len([b for b in branches if b.startswith("conv_kxk.")])
        order = [f"conv_kxk.{b}" for b in range(1, n_conv)] + [b for b in ("conv_1x1", "conv_scale", "identity") if b in branches]
        for rest, value in branches.get("conv_kxk.0", {}).items():
            out[prefix + "trunk." + rest] = value
        for i, branch in enumerate(order):
            target = f"{prefix}extras.{i}." + ("bn." if branch == "identity" else "")
            for rest, value in branches[branch].items():
                out[target + rest] = value
        kinds[block] = tuple("conv_kxk" if b.startswith("conv_kxk") else "identity" if b == "identity" else "conv_1x1" for b in order)
    return out, kinds


def map_timm_resnet(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Kinds]]:
    """timm ``ResNet`` keys → ours: ``conv1``/``bn1`` → ``stem.conv.trunk``, ``layerS.B.convN``/``bnN``
    → ``stages.S-1.B.convN.trunk``, ``downsample.0/1`` → ``downsample.trunk``, ``fc`` → ``head.fc``.
    Every source block is trunk-only. Keys of other ResNet variants (SE, deep stems, ...) raise."""
    out: Dict[str, torch.Tensor] = {}
    kinds: Dict[str, Kinds] = {}
    unknown: List[str] = []
    for key, value in state_dict.items():
        stem, layer, down = _RESNET_STEM.match(key), _RESNET_KEY.match(key), _RESNET_DOWN.match(key)
        if stem:
            block, part, rest = "stem.conv", "conv" if stem.group(1) else "bn", stem.group(2) or stem.group(4)
        elif key in ("fc.weight", "fc.bias"):
            out["head." + key] = value
            continue
        elif layer:
            s, b = layer.group(1), layer.group(2)
            n, part, rest = (layer.group(4), "conv", "weight") if layer.group(3) else (layer.group(7), "bn", layer.group(8))
            block = f"stages.{int(s) - 1}.{b}.conv{n}"
        elif down:
            s, b = down.group(1), down.group(2)
            block = f"stages.{int(s) - 1}.{b}.downsample"
            part, rest = ("conv", "weight") if down.group(3) else ("bn", down.group(6))
        else:
            unknown.append(key)
            continue
        out[f"{block}.trunk.{part}.{rest}"] = value
        kinds[block] = ()
    if unknown:
        raise CheckpointError(
            f"timm ResNet state dict has keys that repan_resnet* has no place for: {unknown[:8]}"
            f"{' ...' if len(unknown) > 8 else ''}; only plain resnet18/34/50 (torchvision layout) map onto repan_resnet*"
        )
    return out, kinds


def adapt_input_kernel(weight: torch.Tensor, in_chans: int, *, groups: int = 1,
                       context: str = "the first conv") -> torch.Tensor:
    """A ``[C_out, C_in / groups, kh, kw]`` stem kernel for ``in_chans`` input channels, as timm adapts
    a pretrained stem (``timm.models.adapt_input_conv``: summed for 1 channel, repeated and rescaled
    for more). Linear in the input channels, so adapting every branch of a Rep block equals
    adapting its fused kernel.

    Raises:
        CheckpointError: a grouped kernel, or channels this timm cannot adapt (timm before
            ``base_chans`` adapts only 3), named by ``context`` with the ``in_chans`` to use instead.
    """
    import inspect

    from timm.models import adapt_input_conv

    chans = int(weight.shape[1]) * groups
    if groups != 1:
        raise CheckpointError(f"{context} is grouped (groups={groups}), so its {chans} input channels cannot be "
                              f"adapted to in_chans={in_chans}; use in_chans={chans}")
    try:
        if "base_chans" in inspect.signature(adapt_input_conv).parameters:
            return adapt_input_conv(in_chans, weight, base_chans=chans)
        if chans == 3:
            return adapt_input_conv(in_chans, weight)
    except NotImplementedError:
        pass
    raise CheckpointError(f"{context}: this timm cannot adapt it from {chans} to {in_chans} input channels; "
                          f"use in_chans={chans}")


def _adapt_stem(name: str, sub: Dict[str, torch.Tensor], target: RepBlock) -> Dict[str, torch.Tensor]:
    """The stem block's branch kernels for the target's input channels (``in_chans`` other than the
    weights'), before the block is converted; other blocks and matching stems pass unchanged.
    Raises :class:`CheckpointError` (:func:`adapt_input_kernel`)."""
    kernels = {k: v for k, v in sub.items() if k.endswith("weight") and v.ndim == 4}
    stored = {int(v.shape[1]) for v in kernels.values()}
    if len(stored) != 1 or stored == {target.in_channels // target.spec.groups}:
        return sub
    return {k: adapt_input_kernel(v, target.in_channels, groups=target.spec.groups, context=f"the first conv {name}")
            if k in kernels else v for k, v in sub.items()}


def _block_of(key: str, names: Mapping[str, RepBlock]) -> Optional[str]:
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in names:
            return prefix
    return None


def _convert_block(name: str, sub: Dict[str, torch.Tensor], kinds: Kinds, target: RepBlock) -> Dict[str, torch.Tensor]:
    """The state of ``target`` computing what ``sub`` (a block of structure ``kinds``) computes; a
    ``sub`` of another structure raises :class:`CheckpointError` naming its keys and shapes."""
    return convert_block_state(sub, kinds, target, name=name,
                               load=lambda source, s: strict_load(source, s, f"state dict block {name!r} (branches {kinds})"))


def _same_structure(sub: Mapping[str, torch.Tensor], target: RepBlock) -> bool:
    expected = target.state_dict()
    if "lam" not in sub:  # a train-form state dict from before λ was saved: the block keeps its λ on load
        expected.pop("lam", None)
    return sub.keys() == expected.keys() and all(sub[k].shape == expected[k].shape for k in sub)


def checkpoint_filter(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``filter_fn``: a state dict with ``model``'s keys, computing what ``state_dict`` computes.
    Each Rep block's entries come in the block's form, except deploy-form entries for a train-form
    block, which stay fused: ``load_state_dict`` / :func:`~repan_zoo.checkpoint.load_into` unfold them
    exactly and mark the invented trunk BN statistics (:func:`~repan_zoo.convert.uncalibrated_blocks`).
    Accepts timm's ``repvgg_*`` / ``mobileone_*`` (train or reparameterized) and ``resnet*`` state
    dicts, and ours in either form. Keys outside the Rep blocks (classifier, SE) are renamed only; a
    block that does not fit raises :class:`~repan_zoo.errors.CheckpointError` naming its
    missing/unexpected keys and shapes.
    """
    sd = _unwrap(state_dict)
    source = detect_source(sd)
    if source == "timm_byobnet":
        mapped, kinds = map_timm_byobnet(sd)
    elif source == "timm_resnet":
        mapped, kinds = map_timm_resnet(sd)
    else:
        mapped, kinds = sd, {}
    blocks = dict(rep_blocks(model))
    if not blocks:
        raise CheckpointError(f"{type(model).__name__} holds no RepBlock: checkpoint_filter is for repan_* models")
    grouped: Dict[str, Dict[str, torch.Tensor]] = defaultdict(dict)
    out: Dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        block = _block_of(key, blocks)
        if block is None:
            out[key] = value
        else:
            grouped[block][key[len(block) + 1:]] = value
    stem = next(iter(blocks))
    for name, sub in grouped.items():
        target = blocks[name]
        if name == stem and source in ("timm_byobnet", "timm_resnet"):  # another in_chans than timm's RGB weights
            sub = _adapt_stem(name, sub, target)
        source_kinds = kinds.get(name, "ours")
        if source_kinds == "ours":  # our own state dict: the architecture's branches, either form
            source_kinds = None if any(k.startswith("reparam_conv.") for k in sub) else tuple(target.arch_branches)
        if _same_structure(sub, target):
            converted = sub
        elif source_kinds is None and not target.deploy:
            # deploy entries for a train-form block stay: loading converts them (RepBlock.load_state_dict
            # or load_into) and flags the trunk statistics it has to invent (UncalibratedBNWarning)
            converted = sub
        else:
            converted = _convert_block(name, sub, source_kinds, target)
        out.update({f"{name}.{k}": v for k, v in converted.items()})
    return out
