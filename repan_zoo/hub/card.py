"""The model card (README.md) of a published repo: metrics, recipe, exactness certificate, usage."""
from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["model_card"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, default=str) + "`"
    return str(value)


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(
    *,
    model: str,
    tag: str,
    repo_id: str,
    license: str,
    metrics: Mapping[str, Mapping[str, Any]],
    recipe: Mapping[str, Any],
    exactness: Mapping[str, Any],
    data: Mapping[str, Any],
    filename: str,
    sha256: str,
    size: int,
    model_args: Mapping[str, Any],
) -> str:
    datasets = sorted(metrics)
    front = [
        "---",
        "library_name: timm",
        f"license: {license}",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- timm",
        "- repan_zoo",
        "- re-parameterization",
    ]
    if datasets:
        front.append("datasets:")
        front += [f"- {d}" for d in datasets]
    front.append("---")
    metric_keys = sorted({k for m in metrics.values() for k in m})
    metric_rows = [[d] + [metrics[d].get(k, "") for k in metric_keys] for d in datasets]
    recipe_rows = [[k, v] for k, v in recipe.items() if v is not None]
    cert_rows = [[k, v] for k, v in exactness.items() if k != "block_errors"]
    args = "".join(f", {k}={v!r}" for k, v in model_args.items() if k != "deploy")
    body = f"""
# {model}.{tag}

A deploy-form (fused, single conv per block) **{model}** from RepAn Zoo, trained with the recipe
below. RepAn (CVPR'24) anneals a re-parameterizable network through cycles of fuse → expand →
restore → calibrate → train; what is published here is the fused network, which computes
exactly what the trained multi-branch network computed (certificate below).

## Metrics

{_table(["dataset"] + metric_keys, metric_rows)}

## Usage

```python
import timm
import repan_zoo  # registers the repan_* models with timm

# this repo, through timm's Hub prefix
model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()

# or by name: pinned commit, size and sha256 checked from repan_zoo's weights manifest
model = timm.create_model("{model}.{tag}", pretrained=True, deploy=True{args}).eval()

# train form (multi-branch, same function) to fine-tune or anneal further
model = timm.create_model("{model}.{tag}", pretrained=True, deploy=False{args})
```

Input: {_fmt(list(data.get("input_size", [])))} normalised with mean {_fmt(list(data.get("mean", [])))} and
std {_fmt(list(data.get("std", [])))}.

## Exactness certificate

Maximum relative error between the fused (deploy) network and the trained multi-branch network
in eval mode (fp32):

{_table(["field", "value"], cert_rows)}

## Recipe

{_table(["setting", "value"], recipe_rows)}

## Files

{_table(["file", "bytes", "sha256"], [[filename, size, sha256]])}

Weights are safetensors only. `repan_zoo` checks the size and sha256 of every file it downloads
before reading a tensor.
"""
    return "\n".join(front) + "\n" + body
