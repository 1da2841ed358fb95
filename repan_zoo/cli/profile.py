"""``repan profile MODEL``: parameters, FLOPs and CPU latency of the train and the deploy form
(:mod:`repan_zoo.profile`)."""
from __future__ import annotations

import argparse
import json

from ..cli_types import number
from .model_options import add_model_options, model_from_args

NAME = "profile"
HELP = "params, FLOPs and CPU latency of the train and the deploy form"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--batch-size", type=number(int, 1), default=1)
    p.add_argument("--threads", type=number(int, 1), default=1, help="intra-op CPU threads while timing")
    p.add_argument("--repeats", type=number(int, 1), default=20)
    p.add_argument("--warmup", type=number(int, 0), default=3)
    p.add_argument("--json", action="store_true", help="print the measurements as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Measure and print (a Markdown table, or JSON)."""
    from ..profile import forms_markdown, profile_forms

    model = model_from_args(args)
    result = profile_forms(
        model, args.input_size, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        threads=args.threads,
    )
    result["model"] = args.model
    print(json.dumps(result, indent=2) if args.json else forms_markdown([result]))
    return 0
