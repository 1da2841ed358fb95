"""Which layers make an INT8 model disagree with its fp32 model: quantize everything, then leave
one group of layers (or one layer) in fp32 at a time and record the self-check of each (issue 18).

The weights are our ImageNet-shaped model's, fitted on Fashion-MNIST by
``benchmarks/inference.py --int8 --fit-steps N`` (``--weights`` names the cached train-form
safetensors file it wrote), or a shipped checkpoint (``--shipped NAME``). Calibration images come
from the training split, the probe from the validation split (never the test set), exactly as
``inference.py`` draws them. The converted graphs run eager (``compile=False``): this measures
numerics, not speed.

    python benchmarks/int8_sensitivity.py --model repan_mobileone_s0 \
        --weights ~/.cache/repan/int8_fit/repan_mobileone_s0-steps500-size224-224-batch16-lr0.1-seed0.safetensors \
        --size 224 --calib-batches 32 --out benchmarks/results/int8_sensitivity_mobileone_s0.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import repan_zoo  # noqa: E402
from inference import images  # noqa: E402
from repan_zoo.fileio import atomic_write  # noqa: E402
from repan_zoo.quantize import layer_errors, quantize  # noqa: E402


def layer_groups(deploy: nn.Module) -> Dict[str, List[str]]:
    """Names of the deploy model's convolutions and linear layers, grouped by kind: the first
    layer, the classifier, depthwise (groups == in_channels > 1), pointwise (1×1, one group),
    other k×k convolutions."""
    layers = [(n, m) for n, m in deploy.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    groups: Dict[str, List[str]] = {"first": [layers[0][0]], "classifier": [layers[-1][0]],
                                    "depthwise": [], "pointwise": [], "kxk": []}
    for name, m in layers[1:-1]:
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            groups["depthwise"].append(name)
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            groups["pointwise"].append(name)
        else:
            groups["kxk"].append(name)
    groups["first+classifier"] = groups["first"] + groups["classifier"]
    return {k: v for k, v in groups.items() if v}


def check(deploy: nn.Module, data: Dict, fp32: List[str], equalize: Optional[float], layers: bool = False) -> Dict:
    t0 = time.perf_counter()
    int8 = quantize(deploy, data["calibration"], probe=data["probe"], fp32_modules=fp32, equalize=equalize,
                    compile=False, min_agreement=0.0, max_rel_error=float("inf"))
    c = int8.check
    row = {"fp32_modules": fp32, "equalize": equalize, "top1_agreement": round(c["top1_agreement"], 4),
           "rel_error": round(c["rel_error"], 4), "fold_rel_error": float(f"{c['fold_rel_error']:.3g}"),
           "seconds": round(time.perf_counter() - t0, 1)}
    if layers:  # propagated per-layer SQNR on the probe (repan_zoo.quantize.layer_errors)
        row["layers"] = layer_errors(int8, data["probe"][:64])
    return row


def _int8_round_trip(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 weights (the X86InductorQuantizer weight scheme), dequantized."""
    scale = (w.abs().flatten(1).amax(1).clamp(min=1e-12) / 127).view(-1, *[1] * (w.dim() - 1))
    return (w / scale).round().clamp(-128, 127) * scale


def is_identity_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1) and m.in_channels == m.out_channels


@torch.no_grad()
def weights_only(deploy: nn.Module, data: Dict) -> Dict:
    """Simulated weight-only INT8 (fp32 activations, constant channels folded first) of (a) every
    layer, (b) depthwise / other layers only, (c) every layer with the diagonal of square 1×1
    convs (where a fused identity branch lands) kept out of the int8 rounding; plus the square
    1×1 convs' median ratio of |diagonal| to the largest off-diagonal weight of its row, and
    their weight round-trip error with and without the diagonal."""
    from repan_zoo.quantize import agreement, fold_constant_channels

    model = copy.deepcopy(deploy)
    fold_constant_channels(model, data["calibration"])
    probe = data["probe"]
    ref = deploy(probe)
    rows = {}
    for mode in ("all", "depthwise_only", "not_depthwise", "all_diagonal_kept"):
        sim = copy.deepcopy(model)
        for m in sim.modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
            if (mode == "depthwise_only" and not depthwise) or (mode == "not_depthwise" and depthwise):
                continue
            w = m.weight.data
            if mode == "all_diagonal_kept" and is_identity_pointwise(m):
                diag = torch.diag(w[:, :, 0, 0].diagonal())[..., None, None]
                m.weight.data = _int8_round_trip(w - diag) + diag
            else:
                m.weight.data = _int8_round_trip(w)
        a = agreement(ref, sim(probe))
        rows[mode] = {"top1_agreement": round(a["top1_agreement"], 4), "rel_error": round(a["rel_error"], 4)}
    square = {}
    for name, m in model.named_modules():
        if is_identity_pointwise(m):
            w = m.weight.detach().double()
            off = w - torch.diag(w[:, :, 0, 0].diagonal())[..., None, None]
            square[name] = {
                "diag_over_max_offdiag_median": round((w[:, :, 0, 0].diagonal().abs() / off.abs().flatten(1).amax(1)).median().item(), 2),
                "weight_rel_error": round(((_int8_round_trip(w) - w).norm() / w.norm()).item(), 4),
                "weight_rel_error_diagonal_kept": round(((_int8_round_trip(off) - off).norm() / w.norm()).item(), 4)}
    return {"simulated": rows, "square_pointwise": square}


class DiagonalSplit(nn.Module):
    """A square 1×1 conv ``W`` computed as ``(W − diag(d)) x + d ⊙ x`` (``d``: its diagonal, where a
    fused identity branch lands), the second term a depthwise 1×1 conv: equal in fp32, but the int8
    scale of each row of ``W − diag(d)`` is no longer set by the diagonal."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        w = conv.weight.detach()
        d = w[:, :, 0, 0].diagonal().clone()
        self.off = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
        self.off.weight.data = w - torch.diag(d)[..., None, None]
        if conv.bias is not None:
            self.off.bias.data = conv.bias.detach().clone()
        self.diag = nn.Conv2d(conv.in_channels, conv.out_channels, 1, groups=conv.in_channels, bias=False)
        self.diag.weight.data = d.view(-1, 1, 1, 1).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.off(x) + self.diag(x)


def split_diagonals(deploy: nn.Module, data: Dict, equalize: Optional[float]) -> Dict:
    """The default flow with every square 1×1 conv split (:class:`DiagonalSplit`) after folding and
    equalization (which need the plain ``conv → ReLU → conv`` chains), quantized with both off."""
    from repan_zoo.quantize import equalize_activations, fold_constant_channels

    model = copy.deepcopy(deploy)
    fold_constant_channels(model, data["calibration"])
    if equalize is not None:
        equalize_activations(model, data["calibration"], alpha=equalize)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_identity_pointwise(child):
                setattr(parent, name, DiagonalSplit(child))
    t0 = time.perf_counter()
    int8 = quantize(model, data["calibration"], probe=data["probe"], fold_constants=False, equalize=None,
                    compile=False, min_agreement=0.0, max_rel_error=float("inf"))
    from repan_zoo.quantize import agreement

    with torch.no_grad():  # against the unchanged fp32 model
        c = agreement(deploy(data["probe"]), int8(data["probe"]))
    return {"equalize": equalize, "top1_agreement": round(c["top1_agreement"], 4), "rel_error": round(c["rel_error"], 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def alpha(text: str) -> Optional[float]:
    return None if text == "none" else float(text)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="an ImageNet-shaped repan_* model (with --weights)")
    ap.add_argument("--weights", type=Path, help="train-form safetensors of --model (inference.py --fit-cache)")
    ap.add_argument("--shipped", help="a manifest model name instead (its pretrained deploy checkpoint)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib-batches", type=int, default=32, help="batches of 16 training images")
    ap.add_argument("--probe", type=int, default=256, help="validation images of the self-check")
    ap.add_argument("--equalize", type=alpha, nargs="*", default=[None, 0.5],
                    help="SmoothQuant strengths of quantize(equalize=...) to compare, 'none' for off")
    ap.add_argument("--weights-only", action="store_true",
                    help="simulate weight-only INT8 (fp32 activations): which layers' weights lose most")
    ap.add_argument("--split-diagonals", action="store_true",
                    help="also quantize with every square 1×1 conv split into off-diagonal + diagonal (first --equalize)")
    ap.add_argument("--append", action="store_true", help="add to the rows of an existing --out file")
    ap.add_argument("--layers", action="store_true", help="record each layer's propagated SQNR (layer_errors)")
    ap.add_argument("--groups", action="store_true", help="leave each group of layers in fp32 (at the first --equalize)")
    ap.add_argument("--per-layer", action="store_true", help="leave each layer alone in fp32 (at the first --equalize)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.shipped:
        model = timm.create_model(args.shipped, pretrained=True).eval()
        chans = model.default_cfg.get("input_size", (1,))[0]
        name = args.shipped
    else:
        from safetensors.torch import load_file

        model = timm.create_model(args.model).eval()
        model.load_state_dict(load_file(str(args.weights.expanduser())))
        chans, name = 3, args.model
    deploy = repan_zoo.reparameterize(model)
    data = images(args.size, chans, batches=args.calib_batches, batch_size=16, probe=args.probe)
    groups = layer_groups(deploy)
    rows = {}
    if args.weights_only:
        rows["weights_only"] = weights_only(deploy, data)
        print(json.dumps(rows["weights_only"], indent=1), file=sys.stderr, flush=True)
    for a in args.equalize:
        rows[f"all:equalize={a}"] = row = check(deploy, data, [], a, layers=args.layers)
        print(f"all INT8, equalize={a}: " + json.dumps({k: v for k, v in row.items() if k != "layers"}), file=sys.stderr, flush=True)
        for r in row.get("layers", []):
            print(f"   {r['layer']:40s} {r['sqnr_db']:7.2f} dB  rel {r['rel_error']:.4f}", file=sys.stderr, flush=True)
    a = args.equalize[0] if args.equalize else 0.5
    if args.split_diagonals:
        rows["split_diagonals"] = split_diagonals(deploy, data, a)
        print(f"square 1x1 diagonals split: {rows['split_diagonals']}", file=sys.stderr, flush=True)
    for group, names in groups.items() if args.groups else ():
        rows[f"group:{group}"] = check(deploy, data, names, a)
        print(f"{group} ({len(names)}) fp32: {rows[f'group:{group}']}", file=sys.stderr, flush=True)
    for layer in [n for names in groups.values() for n in names] if args.per_layer else ():
        if f"layer:{layer}" not in rows:
            rows[f"layer:{layer}"] = check(deploy, data, [layer], a)
            print(f"{layer} fp32: {rows[f'layer:{layer}']}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "INT8 sensitivity: self-check with one group / one layer left in fp32 (torchao PT2E, "
                     "X86InductorQuantizer default config, eager converted graph)",
        "model": name, "weights": str(args.weights.name) if args.weights else "shipped checkpoint",
        "input": [chans, args.size, args.size], "data": data["split"],
        "calibration_images": 16 * args.calib_batches, "groups": groups, "results": rows,
        "command": "python benchmarks/int8_sensitivity.py " + " ".join(
            a if not a.startswith(str(Path.home())) else "~" + a[len(str(Path.home())):] for a in (argv or sys.argv[1:])),
    }
    if args.append and args.out.is_file():
        before = json.loads(args.out.read_text())
        result["results"] = {**before["results"], **rows}
        result["command"] = before["command"] + " && " + result["command"]
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    return result


def markdown(result: Dict) -> str:
    """README table: the self-check of each configuration, the simulated weight-only figures and,
    where recorded, the propagated SQNR at a few depths."""
    res = result["results"]
    lines = [f"| {result['model']} ({'×'.join(map(str, result['input']))}, {result['weights']}) | top-1 agreement | rel. error |",
             "|---|---:|---:|"]
    names = {"all:equalize=None": "INT8, constant channels folded (no equalization)",
             "split_diagonals": "as the default, square 1×1 convs split: off-diagonal conv + diagonal as a depthwise 1×1 conv",
             "all:equalize=0.5": "INT8, folded + activations equalized (α 0.5, the default: `auto` keeps it here)"}
    for key, row in res.items():
        if key == "weights_only":
            continue
        if key == "split_diagonals":
            lines.append(f"| {names[key]} | {row['top1_agreement']:.3f} | {row['rel_error']:.3f} |")
            continue
        label = names.get(key) or (f"as the default, {key.split(':', 1)[1]} kept fp32 "
                                   f"({len(row['fp32_modules'])} layer{'s' if len(row['fp32_modules']) > 1 else ''})"
                                   if key.startswith(("group:", "layer:")) else key)
        lines.append(f"| {label} | {row['top1_agreement']:.3f} | {row['rel_error']:.3f} |")
    sim = res.get("weights_only", {}).get("simulated", {})
    labels = {"all": "simulated: int8 weights only (fp32 activations)", "depthwise_only": "simulated: depthwise weights only",
              "not_depthwise": "simulated: all but depthwise weights",
              "all_diagonal_kept": "simulated: int8 weights, square 1×1 diagonals (fused identity) kept exact"}
    for key, row in sim.items():
        lines.append(f"| {labels.get(key, key)} | {row['top1_agreement']:.3f} | {row['rel_error']:.3f} |")
    with_layers = [(k, r["layers"]) for k, r in res.items() if "layers" in r]
    if with_layers:
        picks = [r["layer"] for r in with_layers[0][1]]
        picks = [picks[i] for i in sorted({0, 4, len(picks) // 3, 2 * len(picks) // 3, len(picks) - 2, len(picks) - 1})
                 if i < len(picks)]
        lines += ["", "| propagated SQNR (dB) | " + " | ".join(f"`{p}`" for p in picks) + " |",
                  "|---|" + "---:|" * len(picks)]
        for key, layers in with_layers:
            by = {r["layer"]: r["sqnr_db"] for r in layers}
            lines.append(f"| {names.get(key, key)} | " + " | ".join(f"{by.get(p, float('nan')):.1f}" for p in picks) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
