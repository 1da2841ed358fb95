"""Constant-channel folding before INT8 quantization (:func:`fold_constant_channels`); see :mod:`repan_zoo.quantize`."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn

#: a folded model may differ from the unfolded one by fp32 rounding only (max-relative, on the calibration batches).
_FOLD_TOLERANCE = 1e-4
_aten = torch.ops.aten
_RELU = (_aten.relu.default, _aten.relu_.default)


# -- constant-channel folding -------------------------------------------------------------------------


def _arg(node: Any, index: int, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else default


def _foldable_pairs(model: nn.Module, example: torch.Tensor) -> List[Dict[str, Any]]:
    """``conv A → ReLU → 1×1 conv B`` chains (A and the ReLU used once, both convs with bias), by
    parameter names, read from the ``torch.export`` graph of ``model``."""
    program = torch.export.export(model, (example,))
    names = program.graph_signature.inputs_to_parameters
    params = dict(model.named_parameters())
    pairs = []
    for b in program.graph.nodes:
        if b.target is not _aten.conv2d.default:
            continue
        relu, b_weight, b_bias = b.args[0], names.get(b.args[1].name), _arg(b, 2, None)
        if b_bias is None or b_weight is None or relu.op != "call_function" or relu.target not in _RELU:
            continue
        a = relu.args[0]
        if (len(relu.users) != 1 or a.op != "call_function" or a.target is not _aten.conv2d.default
                or len(a.users) != 1 or _arg(a, 2, None) is None):
            continue
        pointwise = tuple(params[b_weight].shape[2:]) == (1, 1) and _arg(b, 6, 1) == 1
        if pointwise and all(p == 0 for p in _arg(b, 4, [0])):
            pairs.append({"a_weight": names[a.args[1].name], "a_bias": names[a.args[2].name],
                          "b_weight": b_weight, "b_bias": names[b_bias.name]})
    return pairs


@torch.no_grad()
def fold_constant_channels(model: nn.Module, batches: Sequence[torch.Tensor], *, rtol: float = 1e-6) -> List[Dict[str, Any]]:
    """Fold channels that are constant on ``batches`` into the next 1×1 convolution's bias, in place.

    For every ``conv A → ReLU → conv B`` chain in the ``torch.export`` graph (A and the ReLU
    read only by the next op; B 1×1, no padding, one group, both convs with bias), the ReLU
    output's per-channel min and max are measured on ``batches`` (``N×C×H×W`` float inputs of
    ``model``). A channel ``c`` whose spread ``max − min`` is at most ``rtol·max(|max|, 1)``
    carries the constant ``v_c``: ``B.bias += B.weight[:, c] · v_c``, then ``B.weight[:, c]``,
    ``A.weight[c]`` and ``A.bias[c]`` are set to 0, so the channel is an exact zero (which uint8
    activations represent exactly) and no weight scale is set by it. Exact wherever the
    channel is constant (a dead input channel of a depthwise conv makes it ``A.bias[c]``); on
    other inputs it is checked by the caller (:func:`quantize` compares the folded fp32 model
    with the original). Returns one record per folded layer: A's weight name, the channels,
    the largest ``|B.weight|`` removed. ``model`` must be in eval mode.
    """
    batches = list(batches)
    params = dict(model.named_parameters())
    folded = []
    for pair in _foldable_pairs(model, batches[0]):
        conv_a = model.get_submodule(pair["a_weight"].rsplit(".", 1)[0])
        lo: List[torch.Tensor] = []
        hi: List[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            act = out.relu()
            lo.append(act.amin(dim=(0, 2, 3)))
            hi.append(act.amax(dim=(0, 2, 3)))

        handle = conv_a.register_forward_hook(hook)
        try:
            for batch in batches:
                model(batch)
        finally:
            handle.remove()
        if not hi:
            continue  # A does not run as a module call (the graph names its weight only)
        low, high = torch.stack(lo).amin(0), torch.stack(hi).amax(0)
        const = (high - low) <= rtol * high.abs().clamp(min=1.0)
        if not const.any():
            continue
        w_b, b_b = params[pair["b_weight"]], params[pair["b_bias"]]
        removed = w_b[:, const].abs().max().item()
        b_b.add_(w_b[:, const, 0, 0].to(torch.float64) @ high[const].to(torch.float64))
        w_b[:, const] = 0
        params[pair["a_weight"]][const] = 0
        params[pair["a_bias"]][const] = 0
        folded.append({"layer": pair["a_weight"].rsplit(".", 1)[0], "into": pair["b_weight"].rsplit(".", 1)[0],
                       "channels": const.nonzero().flatten().tolist(), "max_abs_weight_removed": removed})
    return folded


