"""``repan verify MODEL``: check that the model's conversions are exact — Rep (train → deploy,
:func:`repan_zoo.reparameterize`) and Expand + Restore (deploy → train at λ=0,
:func:`repan_zoo.unfold`), each checked block by block, and the round trip train → deploy → train
against the model — and print the max relative errors; exit 0 when all are within the
tolerance (1e-5, fp32), 1 when one is not.

The model is built in its train form; without ``--checkpoint`` or ``--pretrained`` its BatchNorm
statistics are drawn at random (:func:`repan_zoo.randomize.randomize_bn`), since fresh ones hide
fusion errors. The Expand options are those of :class:`~repan_zoo.expansion.Expansion`
(``--branches conv_kxk,conv_1x1`` for a plain network whose blocks have no branch kinds).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

from ..cli_types import SEED_MAX, number
from .base import CheckFailed
from .model_options import add_model_options, model_from_args
from .options import add_config_options, config_values

NAME = "verify"
HELP = "check that Rep, unfold and their round trip keep the model's function (max relative error)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..expansion import Expansion
    from ..verify import DEFAULT_TOLERANCE

    add_model_options(p)
    p.add_argument("--seed", type=number(int, 0, SEED_MAX), default=0,
                   help="seed of the random BN statistics, the probe input and the new branches")
    p.add_argument("--batch-size", type=number(int, 1), default=2, help="probe batch size")
    p.add_argument("--tolerance", type=number(float, 0.0, lo_open=True), default=DEFAULT_TOLERANCE,
                   help="bound on every max relative error (whole model and each block)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_config_options(p.add_argument_group("Expand + Restore (unfold)"), Expansion)


def _figures(report: Dict[str, Any]) -> Dict[str, Any]:
    return {"model_rel_error": report["model_rel_error"], "worst_block": report["worst_block"],
            "worst_block_rel_error": report["worst_block_rel_error"]}


def verify(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the model and measure its conversions.

    Args:
        args: the namespace of ``repan verify``'s parser.

    Returns:
        ``{"model", "input_shape", "tolerance", "random_bn", "reparameterize", "unfold", "round_trip", "exact"}``:
        per conversion its whole-model and worst-block max relative error; ``round_trip`` is
        the error of train → deploy → train against the model.

    Raises:
        ReparameterizationError: a conversion beyond the tolerance (exit status 1).
        RepanError: a model, checkpoint or expansion that cannot be used (exit status 2).
    """
    import torch

    from ..convert import reparameterize, unfold
    from ..expansion import Expansion
    from ..randomize import randomize_bn
    from ..verify import capture, probe_input, relative_error

    expansion = Expansion(**config_values(Expansion, args))
    model = model_from_args(args)
    gen = torch.Generator().manual_seed(args.seed)
    random_bn = not (args.checkpoint or args.pretrained)
    if random_bn:
        randomize_bn(model, gen)
    x = (torch.randn(args.batch_size, *args.input_size, generator=gen) if args.input_size
         else probe_input(model, batch_size=args.batch_size, seed=args.seed))
    check = dict(example_input=x, tolerance=args.tolerance)
    deploy = reparameterize(model, **check)
    train = unfold(deploy, expansion, generator=gen, **check)
    outputs: List[List[torch.Tensor]] = [capture(m, x, [])[0] for m in (model, train)]
    round_trip = max((relative_error(a, b) for a, b in zip(*outputs)), default=0.0)
    return {"model": args.model, "input_shape": list(x.shape), "tolerance": args.tolerance, "random_bn": random_bn,
            "reparameterize": _figures(deploy.repan_exactness), "unfold": _figures(train.repan_exactness),
            "round_trip": {"model_rel_error": round_trip}, "exact": round_trip <= args.tolerance}


def run(args: argparse.Namespace) -> int:
    """Print the figures (a table, or JSON).

    Raises:
        CheckFailed: the round trip is beyond the tolerance (exit status 1).
    """
    result = verify(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        shape = "×".join(map(str, result["input_shape"]))
        bn = f"random BN statistics, seed {args.seed}" if result["random_bn"] else "BN statistics of the weights"
        print(f"{result['model']} ({bn}; probe {shape}; tolerance {result['tolerance']:g})")
        for step, what in (("reparameterize", "train → deploy"), ("unfold", "deploy → train, λ=0"),
                           ("round_trip", "train → deploy → train vs the model")):
            r = result[step]
            worst = f" (worst block {r['worst_block']}: {r['worst_block_rel_error']:.2g})" if r.get("worst_block") else ""
            print(f"  {step:<15} {what:<36} max relative error {r['model_rel_error']:.2g}{worst}")
    if not result["exact"]:
        raise CheckFailed(f"the round trip train → deploy → train changed {args.model}'s output by "
                          f"{result['round_trip']['model_rel_error']:.3g} (tolerance {args.tolerance:g})")
    return 0
