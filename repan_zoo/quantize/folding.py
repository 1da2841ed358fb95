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


def _relu_pairs(model: nn.Module, example: torch.Tensor) -> List[Dict[str, Any]]:
    """``conv A → ReLU → conv B`` chains (A and the ReLU read by nothing else, A with bias), by
    parameter names, read from the ``torch.export`` graph of ``model``. ``kind`` of B:
    ``"pointwise"`` (1×1, no padding, one group, with bias), ``"dense"`` (any other one-group
    conv) or ``"depthwise"`` (groups == input channels); other grouped convs are skipped."""
    program = torch.export.export(model, (example,))
    names = program.graph_signature.inputs_to_parameters
    params = dict(model.named_parameters())
    pairs = []
    for b in program.graph.nodes:
        if b.target is not _aten.conv2d.default:
            continue
        relu, b_weight, b_bias = b.args[0], names.get(b.args[1].name), _arg(b, 2, None)
        if b_weight is None or relu.op != "call_function" or relu.target not in _RELU:
            continue
        a = relu.args[0]
        if (len(relu.users) != 1 or a.op != "call_function" or a.target is not _aten.conv2d.default
                or len(a.users) != 1 or _arg(a, 2, None) is None):
            continue
        w_b, groups = params[b_weight], _arg(b, 6, 1)
        if groups == 1:
            pointwise = (tuple(w_b.shape[2:]) == (1, 1) and all(p == 0 for p in _arg(b, 4, [0]))
                         and b_bias is not None)
            kind = "pointwise" if pointwise else "dense"
        elif w_b.shape[1] == 1 and w_b.shape[0] == groups:  # one filter per input channel
            kind = "depthwise"
        else:
            continue
        pairs.append({"a_weight": names[a.args[1].name], "a_bias": names[a.args[2].name], "b_weight": b_weight,
                      "b_bias": names[b_bias.name] if b_bias is not None else None, "kind": kind})
    return pairs


def _relu_output_ranges(model: nn.Module, layers: Sequence[str], batches: Sequence[torch.Tensor]) -> Dict[str, Any]:
    """Per-channel ``(min, max)`` of ``relu(layer(...))`` over ``batches`` for each of ``layers``,
    in one pass (a layer not called as a module is left out)."""
    lo: Dict[str, List[torch.Tensor]] = {name: [] for name in layers}
    hi: Dict[str, List[torch.Tensor]] = {name: [] for name in layers}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            act = out.relu()
            lo[name].append(act.amin(dim=(0, 2, 3)))
            hi[name].append(act.amax(dim=(0, 2, 3)))
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in layers]
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (torch.stack(lo[name]).amin(0), torch.stack(hi[name]).amax(0)) for name in layers if hi[name]}


def _layer(param: str) -> str:
    return param.rsplit(".", 1)[0]


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
    pairs = [pair for pair in _relu_pairs(model, batches[0]) if pair["kind"] == "pointwise"]
    ranges = _relu_output_ranges(model, [_layer(pair["a_weight"]) for pair in pairs], batches)
    for pair in pairs:
        if _layer(pair["a_weight"]) not in ranges:
            continue  # A does not run as a module call (the graph names its weight only)
        low, high = ranges[_layer(pair["a_weight"])]
        const = (high - low) <= rtol * high.abs().clamp(min=1.0)
        if not const.any():
            continue
        w_b, b_b = params[pair["b_weight"]], params[pair["b_bias"]]
        removed = w_b[:, const].abs().max().item()
        b_b.add_(w_b[:, const, 0, 0].to(torch.float64) @ high[const].to(torch.float64))
        w_b[:, const] = 0
        params[pair["a_weight"]][const] = 0
        params[pair["a_bias"]][const] = 0
        folded.append({"layer": _layer(pair["a_weight"]), "into": _layer(pair["b_weight"]),
                       "channels": const.nonzero().flatten().tolist(), "max_abs_weight_removed": removed})
    return folded


@torch.no_grad()
def equalize_activations(model: nn.Module, batches: Sequence[torch.Tensor], *, alpha: float = 0.5,
                         min_range: float = 1e-6) -> List[Dict[str, Any]]:
    """Equalize the per-channel ranges of every ``conv A → ReLU → conv B`` activation, in place:
    exact in real arithmetic, it lets one per-tensor INT8 scale fit every channel.

    For each chain (:func:`_relu_pairs`), ``r_c`` is the largest ReLU output of channel ``c`` on
    ``batches`` and ``w_c`` the largest ``|B.weight|`` reading it. A's output channel ``c``
    (weight and bias) is divided by ``s_c`` and B's input channel ``c`` multiplied by it —
    ``relu(x / s) = relu(x) / s`` for ``s > 0``, so the model's function is unchanged. The
    factor follows SmoothQuant (Xiao et al., ICML 2023, Eq. 4), here through the ReLU as in the
    cross-layer equalization of Nagel et al. (ICCV 2019, Sec. 4.1): ``s_c = r_c^α / w_c^(1−α)``
    for a one-group B, whose per-output-channel weight scales see the scaled columns (``alpha``
    balances activation against weight range); ``s_c = r_c`` for a depthwise B, whose
    per-channel weight scale absorbs any factor (activation ranges equalized fully, at no
    cost). The factors are normalized to geometric mean 1; channels with ``r_c`` or ``w_c``
    at most ``min_range`` (dead ones) keep ``s_c = 1``. ``model`` must be in eval mode;
    ``batches``: ``N×C×H×W`` float inputs of it. The ranges are measured once, before any change
    (equalizing one pair leaves every layer's output but A's unchanged). Returns one record per
    pair: A, B, B's kind, the spread ``max r_c / min r_c`` (live channels) before and after.
    Raises ``ValueError`` for ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: the SmoothQuant migration strength must be in [0, 1] (0.5 balances)")
    batches = list(batches)
    params = dict(model.named_parameters())
    records = []
    pairs = _relu_pairs(model, batches[0])
    ranges = _relu_output_ranges(model, [_layer(pair["a_weight"]) for pair in pairs], batches)
    for pair in pairs:
        layer = _layer(pair["a_weight"])
        if layer not in ranges:
            continue
        r = ranges[layer][1].double()
        w_b, w_a, b_a = params[pair["b_weight"]], params[pair["a_weight"]], params[pair["a_bias"]]
        if pair["kind"] == "depthwise":
            s = r.clone()
            w_col = torch.ones_like(r)
        else:
            w_col = w_b.detach().abs().amax(dim=(0, 2, 3)).double()
            s = r.pow(alpha) / w_col.pow(1.0 - alpha)
        live = (r > min_range) & (w_col > min_range)
        if live.sum() < 2:
            continue
        s = torch.where(live, s / s[live].log().mean().exp(), torch.ones_like(s))
        shape_a = (-1,) + (1,) * (w_a.dim() - 1)
        w_a.div_(s.view(shape_a).to(w_a.dtype))
        b_a.div_(s.to(b_a.dtype))
        if pair["kind"] == "depthwise":
            w_b.mul_(s.view(-1, 1, 1, 1).to(w_b.dtype))
        else:
            w_b.mul_(s.view(1, -1, 1, 1).to(w_b.dtype))
        r_live = r[live]
        after = (r / s)[live]
        records.append({"layer": layer, "into": _layer(pair["b_weight"]), "kind": pair["kind"],
                        "spread_before": (r_live.max() / r_live.min()).item(),
                        "spread_after": (after.max() / after.min()).item()})
    return records
