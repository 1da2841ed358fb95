"""Run outputs: per-epoch metrics (CSV + JSON) and the learning curve with cycle boundaries
(the paper's Fig. 3), all written atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..fileio import atomic_write
from ..jsonio import dumps

__all__ = ["METRIC_COLUMNS", "write_metrics", "write_json", "plot_learning_curve", "portable"]

METRIC_COLUMNS = (
    "cycle", "epoch", "global_epoch", "expand", "lam", "lr", "train_loss", "train_top1",
    "val_loss", "val_top1", "test_top1", "steps", "images", "epoch_time_s", "time_s", "device",
    "precision", "processor",
)


def write_json(path: Path, obj: Any) -> Path:
    text = dumps(obj, indent=1, sort_keys=False, default=str)  # NaN/inf become null: always valid JSON
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def portable(value: Any, roots: Dict[str, str]) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every occurrence of each ``roots`` key
    (a machine's absolute path prefix: a runs root, the checkout, the interpreter) replaced by its
    value (``$REPAN_RUNS``, ``.``, ``python``), longest prefix first — for result files that are
    committed and read on other machines. Other values are returned unchanged."""
    if isinstance(value, str):
        for prefix in sorted(roots, key=len, reverse=True):
            value = value.replace(prefix, roots[prefix])
        return value
    if isinstance(value, dict):
        return {k: portable(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, roots) for v in value]
    return value


def write_metrics(out: Path, history: Sequence[Dict[str, Any]]) -> None:
    """``metrics.csv`` (one row per epoch, :data:`METRIC_COLUMNS`) and ``metrics.json``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    text = buf.getvalue()
    atomic_write(Path(out) / "metrics.csv", lambda tmp: Path(tmp).write_text(text))
    write_json(Path(out) / "metrics.json", list(history))


def plot_learning_curve(history: Sequence[Dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Top-1 (validation, test) per epoch with dotted lines at cycle boundaries and λ on a
    second axis, like Fig. 3 of the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: List[Dict[str, Any]] = list(history)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    x = [r["global_epoch"] for r in rows]
    for key, label, style in (("val_top1", "validation top-1", "-o"), ("test_top1", "test top-1", "-s")):
        ys = [r.get(key) for r in rows]
        if any(v is not None for v in ys):
            ax.plot(x, ys, style, ms=3, lw=1.4, label=label)
    previous = None
    for r in rows:
        if previous is not None and r["cycle"] != previous:
            ax.axvline(r["global_epoch"] - 0.5, color="0.6", ls=":", lw=1)
        previous = r["cycle"]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.25)
    lam = [r.get("lam") for r in rows]
    if any(v is not None for v in lam):
        ax2 = ax.twinx()
        ax2.step(x, [v if v is not None else float("nan") for v in lam], where="mid", color="tab:gray",
                 alpha=0.5, lw=1, label="λ (end of epoch)")
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_ylabel("λ")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "learning curve (dotted: cycle boundaries)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
