"""The shippable INT8 artefact: :func:`export_int8` writes a checked ``torch.export`` program,
:func:`load_int8` reads one back after checking it; see :mod:`repan_zoo.quantize`."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..errors import QuantizationError
from ..fileio import atomic_write, check_file_target, file_facts
from ..verify import relative_error
from .core import DEFAULT_MAX_REL_ERROR, DEFAULT_MIN_AGREEMENT, _calibration, _judge, agreement, _probe_for, quantize


# -- the shippable artefact -------------------------------------------------------------------------------

_PICKLED_PREFIXES = ("custom_obj", "opaque_obj")


def _pickled_payloads(archive_file: Any) -> List[str]:
    """Entries of a ``torch.export.save`` archive that ``torch.export.load`` would unpickle."""
    found = []
    with zipfile.ZipFile(archive_file) as archive:
        for name in archive.namelist():
            base = os.path.basename(name)
            if base.startswith(_PICKLED_PREFIXES):
                found.append(name)
            elif base.endswith(".json") and ("weights_config" in base or "constants_config" in base):
                config = json.loads(archive.read(name))
                for fqn, meta in (config.get("config") or {}).items():
                    if isinstance(meta, dict) and meta.get("use_pickle"):
                        found.append(f"{name}:{fqn}")
    return found


def load_int8(path: os.PathLike, *, sha256: Optional[str] = None) -> nn.Module:
    """Load an INT8 program written by :func:`export_int8` (``torch.export.load``), checked first.

    The file must exist, be a ``torch.export`` archive, match ``sha256`` (64 hex digits, e.g.
    from the export report) when given, and hold no pickled payload (``torch.export.load``
    unpickles tensor subclasses and custom objects; an INT8 program of this package has none).
    Returns the program as an eager ``nn.Module`` (``N×C×H×W`` float32 in, logits out); wrap it
    in ``torch.compile(m, options={"freezing": True})`` for speed. Raises
    :class:`~repan_zoo.errors.QuantizationError` otherwise, and ``FileNotFoundError``.
    """
    path = os.fspath(path)
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ValueError(f"sha256={sha256!r}: give the file's sha256 as 64 hex digits (export_int8's report['sha256'])")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no INT8 program at {path}; write one with `repan export MODEL --int8 --out {path}`")
    with open(path, "rb") as fh:
        data = fh.read()  # checked and loaded from these bytes: what is checked is what is loaded
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise QuantizationError(f"{path} has sha256 {actual}, expected {sha256}: the file is not the one exported; "
                                    "export it again")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise QuantizationError(f"{path} is not a torch.export archive (.pt2); export it with repan export --int8")
    pickled = _pickled_payloads(io.BytesIO(data))
    if pickled:
        raise QuantizationError(f"{path} holds pickled payloads ({', '.join(pickled[:4])}); refusing to load them. "
                                "Export the INT8 program again with repan_zoo.quantize.export_int8")
    return torch.export.load(io.BytesIO(data)).module()


def export_int8(
    model: nn.Module,
    path: os.PathLike,
    calibration_batches: Iterable[Any],
    *,
    probe: Optional[torch.Tensor] = None,
    fold_constants: bool = True,
    equalize: Union[float, None, str] = "auto",
    fp32_modules: Sequence[str] = (),
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
) -> Dict[str, Any]:
    """Quantize ``model`` (:func:`quantize`, not compiled) and save the INT8 program at ``path``
    with ``torch.export.save`` (dynamic batch axis), then prove the file: :func:`load_int8` it
    back and run the probe and a one-image slice of it; the outputs must equal the in-memory
    INT8 model's (relative error ≤ 1e-5) and pass the fp32 self-check. Written atomically: a
    refused export leaves no file at ``path``.

    Arguments as :func:`quantize`. Returns a report: path, bytes, sha256, input shape, the
    self-check, and the file-vs-memory relative error. Raises what :func:`quantize` raises, and
    :class:`~repan_zoo.errors.QuantizationError` when the reloaded file computes something else.
    """
    check_file_target(path)  # a folder in the way is named before the quantization runs
    batches = _calibration(calibration_batches)
    probe = _probe_for(batches, probe)
    if len(probe) < 2:
        raise QuantizationError(f"the probe holds {len(probe)} image(s); export needs at least 2 images "
                                "(torch.export keeps the batch axis dynamic only from 2)")
    int8 = quantize(model, batches, probe=probe, fold_constants=fold_constants, equalize=equalize,
                    fp32_modules=fp32_modules, compile=False, min_agreement=min_agreement, max_rel_error=max_rel_error)
    inputs = [probe, probe[:1]]
    with torch.no_grad():
        expected = [int8.graph(x) for x in inputs]
    program = torch.export.export(int8.graph, (probe[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    facts: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        buffer = io.BytesIO()  # torch.export.save wants a buffer or a name ending in .pt2 (the temp file's does not)
        torch.export.save(program, buffer)
        with open(tmp, "wb") as fh:
            fh.write(buffer.getvalue())
        loaded = load_int8(tmp)
        with torch.no_grad():
            got = [loaded(x) for x in inputs]
        facts["file_vs_memory_rel_error"] = max(relative_error(e, g) for e, g in zip(expected, got))
        if facts["file_vs_memory_rel_error"] > 1e-5:
            raise QuantizationError(f"the saved INT8 program differs from the in-memory one by "
                                    f"{facts['file_vs_memory_rel_error']:.3g} (relative); no file was written")
        check = dict(int8.check, **agreement(int8.reference, got[0]))
        _judge(check, "the saved INT8 program")
        facts["check"] = check
        facts.update(file_facts(tmp))

    out = atomic_write(path, write)
    return {"format": "torch.export (INT8, PT2E x86_inductor)", "path": os.fspath(out),
            "input_shape": list(probe.shape), "dynamic_batch": True, **facts, "torch": torch.__version__}

