"""Publish a deploy checkpoint: to the Hugging Face Hub (:func:`publish`) or into the package (:func:`bundle`),
and record it in the weights manifest.

Inputs: the deploy checkpoint (typed safetensors, :mod:`repan_zoo.checkpoint`) and the training
run's metrics JSON: the trainer's ``final.json``, read as the typed
:class:`~repan_zoo.runtime.summary.RunSummary`, or any JSON with these fields (``recipe.*`` is the trainer's ``TrainConfig.as_dict()``):

``model``                     timm model name (else ``recipe.model``, else the checkpoint's ``architecture``)
``create_kwargs``             kwargs to rebuild the model (the trainer's: ``num_classes``, ``in_chans``, ...);
                              else ``model_kwargs`` / ``model_args``, else ``recipe.model_kwargs``
``test_top1`` (+ ``val_top1``, ...)  one dataset's figures at the top level (the trainer's), the dataset named by
                              ``dataset`` / ``data.dataset`` / ``recipe.dataset``; or ``metrics``:
                              ``{dataset: top1 | {"top1": .., ...}}`` or one dataset's ``{"test_top1": .., ...}``.
                              **Required.** A trainer's ``final.json`` may carry ``metrics`` as well: its further
                              figures (an arm's seed mean ± std) are recorded beside the run's own; one that
                              contradicts them is refused.
``exactness``                 the certificate: ``tolerance`` and ``model_rel_error`` (or ``max_rel_error``),
                              optionally ``worst_block_rel_error``; every error ≤ tolerance. Else the checkpoint's
                              own ``exactness`` metadata. **Required.**
``recipe``                    the training recipe (recorded as is)
``data`` / ``data_config``    ``input_size`` [C, H, W], ``mean``, ``std`` (else top-level keys, else the model's cfg)

Publishing refuses (:class:`PublishError`) without metrics or a passing exactness certificate, for
a train-form checkpoint, or for one that does not load strictly into ``timm.create_model(model,
deploy=True, **model_kwargs)``. After the upload, the Hub's metadata of the new commit is checked
against the local sha256 and size before the manifest entry is written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import manifest
from ..checkpoint import load_into, read_checkpoint, state_dict_form
from ..fileio import atomic_write
from ..errors import CheckpointError, PublishError
from ..jsonio import is_number
from ..manifest import WeightEntry
from ..runtime.summary import RunSummary, SummaryError
from .card import model_card
from .integrity import git_blob_sha1, sha256_file
from .resolve import DEFAULT_FILENAME

__all__ = ["RunRecord", "read_run", "check_exactness", "prepare", "publish", "bundle", "retire", "PublishResult"]

_METRIC_NAMES = {"top1", "top5", "test_top1", "test_top5", "val_top1", "val_top5", "loss", "test_loss", "val_loss"}
_ERROR_FIELDS = ("model_rel_error", "max_rel_error", "worst_block_rel_error")


@dataclass
class RunRecord:
    """What publishing needs from a training run."""

    model: str
    model_kwargs: Dict[str, Any]
    metrics: Dict[str, Dict[str, Any]]
    exactness: Dict[str, Any]
    recipe: Dict[str, Any]
    data: Dict[str, Any]


def _normalise_metrics(raw: Any, dataset: Optional[str], where: str) -> Dict[str, Dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        return {}
    if set(raw) & _METRIC_NAMES:  # one dataset's figures
        if not dataset:
            raise PublishError(f"{where}: metrics {sorted(raw)} do not say which dataset; add 'dataset' to the JSON")
        raw = {dataset: raw}
    out: Dict[str, Dict[str, Any]] = {}
    for name, value in raw.items():
        figures = {"top1": value} if is_number(value) else dict(value) if isinstance(value, dict) else {}
        if "top1" not in figures and "test_top1" in figures:
            figures["top1"] = figures["test_top1"]
        if not is_number(figures.get("top1")):
            raise PublishError(f"{where}: metrics[{name!r}] has no numeric top-1 ({value!r})")
        out[str(name)] = {k: v for k, v in figures.items() if is_number(v)}
    return out


def _merge_figures(measured: Dict[str, Dict[str, Any]], extra: Dict[str, Dict[str, Any]], where: str) -> None:
    """Add ``extra``'s figures (e.g. an arm's seed mean ± std, ``benchmarks/accuracy/ship.py``) to the
    run's ``measured`` ones, refusing one that contradicts a measured figure."""
    for name, figures in extra.items():
        mine = measured.setdefault(name, {})
        for key, value in figures.items():
            if key in mine and not math.isclose(mine[key], value, abs_tol=1e-9):
                raise PublishError(f"{where}: metrics[{name!r}][{key!r}] = {value} contradicts the run's own "
                                   f"{key} = {mine[key]}; remove it from 'metrics' (the run's figures are recorded)")
            mine[key] = value


def check_exactness(cert: Any, where: str) -> Dict[str, Any]:
    """The certificate, if it proves fused == trained within its tolerance; else :class:`PublishError`."""
    if isinstance(cert, str):
        try:
            cert = json.loads(cert)
        except json.JSONDecodeError:
            cert = None
    if not isinstance(cert, dict) or not cert:
        raise PublishError(
            f"{where} has no exactness certificate: publishing needs proof that the deploy weights compute what the "
            "trained network computed. Produce it with repan_zoo.reparameterize(model) (it attaches "
            "model.repan_exactness; the trainer writes it to final.json as 'exactness')"
        )
    tol = cert.get("tolerance")
    errors = {k: cert[k] for k in _ERROR_FIELDS if cert.get(k) is not None}
    if not is_number(tol) or not errors:
        raise PublishError(
            f"{where}: the exactness certificate needs a numeric 'tolerance' and 'model_rel_error' "
            f"(or 'max_rel_error'); got keys {sorted(cert)}"
        )
    bad = {k: v for k, v in errors.items() if not is_number(v) or v > tol}
    if bad:
        raise PublishError(
            f"{where}: the exactness certificate fails: {bad} exceed the tolerance {tol:g}. The deploy weights do not "
            "compute what the trained network did; fix the conversion before publishing"
        )
    return dict(cert)


def read_run(metrics_json: Optional[Path], checkpoint_meta: Mapping[str, str]) -> RunRecord:
    """Read the training run's metrics JSON (see the module docstring for the fields)."""
    if metrics_json is None:
        raise PublishError("no metrics JSON given: publishing needs the training run's metrics (final.json)")
    path = Path(metrics_json)
    if not path.is_file():
        raise PublishError(f"metrics JSON {path} does not exist; pass the run's final.json")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PublishError(f"metrics JSON {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PublishError(f"metrics JSON {path} must hold an object")
    if RunSummary.is_summary(doc):  # the trainer's final.json: read typed
        try:
            summary = RunSummary.from_dict(doc, where=str(path))
        except SummaryError as exc:
            raise PublishError(str(exc)) from None
        metrics = _normalise_metrics({"test_top1": summary.test_top1, "val_top1": summary.val_top1},
                                     summary.dataset, str(path))
        _merge_figures(metrics, _normalise_metrics(doc.get("metrics"), summary.dataset, str(path)), str(path))
        return RunRecord(summary.model, dict(summary.create_kwargs), metrics,
                         check_exactness(summary.exactness, str(path)),
                         manifest.published_recipe(dict(summary.recipe), summary.teacher, summary.init,
                                                   summary.resumed_with), dict(summary.data))
    recipe = doc.get("recipe") if isinstance(doc.get("recipe"), dict) else {}
    data = next((doc[k] for k in ("data", "data_config") if isinstance(doc.get(k), dict)), {})
    data = dict(data)
    for key in ("input_size", "mean", "std", "num_classes"):
        if key in doc and key not in data:
            data[key] = doc[key]
    model = doc.get("model") or recipe.get("model") or checkpoint_meta.get("architecture")
    if not model:
        raise PublishError(f"{path}: no model name ('model' or 'recipe.model') and the checkpoint names none")
    kwargs = next((doc[k] for k in ("create_kwargs", "model_kwargs", "model_args") if isinstance(doc.get(k), dict)), None)
    if kwargs is None:
        kwargs = recipe.get("model_kwargs") if isinstance(recipe.get("model_kwargs"), dict) else {}
    dataset = doc.get("dataset") or data.get("dataset") or recipe.get("dataset")
    metrics = _normalise_metrics(doc.get("metrics"), dataset, str(path))
    if not metrics:
        top = {k: doc[k] for k in ("top1", "test_top1", "top5", "test_top5", "val_top1") if is_number(doc.get(k))}
        metrics = _normalise_metrics(top, dataset, str(path))
    if not metrics:
        raise PublishError(
            f"{path} has no metrics: publishing needs the measured accuracy ('test_top1' with 'dataset', or "
            "'metrics': {{dataset: {{'top1': ..}}}})"
        )
    cert = doc.get("exactness") or checkpoint_meta.get("exactness")
    exactness = check_exactness(cert, str(path))
    return RunRecord(str(model), dict(kwargs), metrics, exactness,
                     manifest.published_recipe(recipe, doc.get("teacher"), doc.get("init"), doc.get("resumed_with")), data)


@dataclass
class Prepared:
    """A checked checkpoint with its config.json, card and manifest fields, staged in ``folder``."""

    run: RunRecord
    tag: str
    license: str
    folder: Path
    weights: Path
    sha256: str
    size: int
    git_sha1: str
    input_size: list
    mean: list
    std: list
    num_classes: int


def _check_loads(checkpoint: Path, run: RunRecord):
    """Build ``timm.create_model(model, deploy=True, **kwargs)`` and load the checkpoint strictly."""
    import timm

    state_dict, meta = read_checkpoint(checkpoint)
    form = meta.get("form") or state_dict_form(state_dict)
    if form != "deploy":
        raise PublishError(
            f"{checkpoint} is a {form or 'plain'}-form checkpoint; publish the deploy (fused) weights: "
            "repan_zoo.reparameterize(model) then repan_zoo.checkpoint.save_checkpoint"
        )
    if not timm.is_model(run.model):
        raise PublishError(
            f"{run.model} is not a timm model known here; `import repan_zoo` registers the repan_* models. "
            "Only registered models can be published (timm must rebuild them from config.json)"
        )
    kwargs = {k: v for k, v in run.model_kwargs.items() if k not in ("pretrained", "deploy")}
    model = timm.create_model(run.model, pretrained=False, deploy=True, **kwargs)
    try:
        load_into(model, state_dict, meta, what=f"checkpoint {checkpoint}")
    except CheckpointError as exc:
        raise PublishError(f"{checkpoint} does not load into {run.model}({kwargs}): {exc}") from exc
    return model, meta


def _measured_certificate(model, checkpoint: Path) -> Dict[str, Any]:
    """A checkpoint that carries no certificate of its own gets one measured here, so that every
    manifest entry certifies the very bytes it names: the deploy model against its train form
    (:func:`repan_zoo.unfold`, what ``pretrained=True`` builds for training) on a probe input."""
    from ..convert import unfold

    train = unfold(model, verify=True)
    return check_exactness(dict(train.repan_exactness, probe="measured by repan-publish: fused vs unfolded"),
                           f"{checkpoint} (certificate measured at publish time)")


def _data_config(run: RunRecord, model) -> Dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    in_chans = getattr(model, "in_chans", None) or run.model_kwargs.get("in_chans") or (cfg.get("input_size") or [3])[0]
    size = list(run.data.get("input_size") or cfg.get("input_size") or [])
    mean = list(run.data.get("mean") or cfg.get("mean") or [])
    std = list(run.data.get("std") or cfg.get("std") or [])
    if len(size) == 2:
        size = [in_chans, *size]
    if len(size) != 3 or size[0] != in_chans or len(mean) != in_chans or len(std) != in_chans:
        raise PublishError(
            f"cannot tell the input preprocessing of {run.model} (in_chans={in_chans}): input_size={size}, "
            f"mean={mean}, std={std}. Add 'data': {{'input_size': [C, H, W], 'mean': [...], 'std': [...]}} to the "
            "metrics JSON"
        )
    return {"input_size": [int(v) for v in size], "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _write_timm_config(model: Any, path: Path) -> None:
    """timm's ``config.json`` for ``model`` (deploy form) at ``path``, through timm's public
    ``timm.models.save_for_hf``. Its ``pretrained_cfg`` (input size, mean, std) comes from the
    model's ``pretrained_cfg``, which every timm release since 1.0.16 reads (1.0.31's ``data_config``
    argument is not needed). That also writes the weights; they go to a scratch folder and are
    dropped, because the published file is the certified checkpoint's exact bytes."""
    from timm.models import save_for_hf

    with tempfile.TemporaryDirectory(prefix="repan-config-") as scratch:
        save_for_hf(model, scratch, model_args={"deploy": True}, safe_serialization=True)
        shutil.copyfile(Path(scratch) / "config.json", path)


def prepare(
    checkpoint: Path, metrics_json: Optional[Path], *, tag: str, license: str, repo_id: str, folder: Path
) -> Prepared:
    """Check everything and stage ``model.safetensors``, ``config.json`` and ``README.md`` in ``folder``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise PublishError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.suffix != ".safetensors":
        raise PublishError(f"{checkpoint}: only safetensors checkpoints are published (no pickles)")
    _, meta = read_checkpoint(checkpoint)
    run = read_run(metrics_json, meta)
    if not manifest.is_valid_tag(tag):
        raise PublishError(f"tag {tag!r}: use letters, digits, '_', '-', '.' (e.g. 'fmnist_repan')")
    model, _ = _check_loads(checkpoint, run)
    if not meta.get("exactness"):
        run = dataclasses.replace(run, exactness=_measured_certificate(model, checkpoint))
    data = _data_config(run, model)
    num_classes = int(getattr(model, "num_classes", 0) or run.data.get("num_classes") or 0)
    if num_classes <= 0:
        raise PublishError(f"{run.model} has no classifier (num_classes={num_classes}); publish a classification model")

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / DEFAULT_FILENAME
    shutil.copyfile(checkpoint, weights)  # the exact bytes that were certified
    sha, size = sha256_file(weights), weights.stat().st_size
    model.pretrained_cfg = {**dict(getattr(model, "pretrained_cfg", None) or {}), "architecture": run.model, "tag": tag,
                            "license": license, "input_size": tuple(data["input_size"]),
                            "mean": tuple(data["mean"]), "std": tuple(data["std"])}
    _write_timm_config(model, folder / "config.json")
    card = model_card(
        model=run.model, tag=tag, repo_id=repo_id, license=license, metrics=run.metrics, recipe=run.recipe,
        exactness=run.exactness, data=data, filename=DEFAULT_FILENAME, sha256=sha, size=size,
        model_args={k: v for k, v in run.model_kwargs.items() if k not in ("pretrained", "deploy")},
    )
    (folder / "README.md").write_text(card, encoding="utf-8")
    return Prepared(run, tag, license, folder, weights, sha, size, git_blob_sha1(weights),
                    data["input_size"], data["mean"], data["std"], num_classes)


def _entry(p: Prepared, **where) -> WeightEntry:
    return WeightEntry.from_dict(
        {
            "model": p.run.model, "tag": p.tag, **where, "sha256": p.sha256, "size": p.size,
            "num_classes": p.num_classes, "input_size": p.input_size, "mean": p.mean, "std": p.std,
            "metrics": p.run.metrics, "recipe": p.run.recipe, "exactness": p.run.exactness, "license": p.license,
            **({"model_kwargs": p.run.model_kwargs} if p.run.model_kwargs else {}),
        },
        where="publish",
    )


@dataclass
class PublishResult:
    entry: WeightEntry
    manifest_file: Optional[Path]
    folder: Path
    commit: Optional[str] = None
    #: the entries taken out of the manifest (``supersede``)
    superseded: List[WeightEntry] = dataclasses.field(default_factory=list)


def publish(
    checkpoint,
    metrics_json,
    repo_id: str,
    *,
    tag: str,
    license: str = "apache-2.0",
    family: Optional[str] = None,
    manifest_dir=None,
    out_dir=None,
    private: bool = False,
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
    commit_message: Optional[str] = None,
    dry_run: bool = False,
    default: bool = False,
    supersede: Sequence[str] = (),
) -> PublishResult:
    """Check, stage, upload with ``HfApi`` (create_repo + create_commit), verify the Hub's copy and write the
    manifest entry (pinned to the new commit). ``dry_run``: stage into ``out_dir`` only. ``default``: list the
    new entry first (timm's default tag); ``supersede``: the entries the new one replaces (tags of the same model, or
    ``MODEL.TAG`` of another), checked before anything is uploaded and taken out of the manifest
    (:func:`retire`) once it is written."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_hf_file_metadata, hf_hub_url

    if not manifest.is_valid_repo_id(repo_id):
        raise PublishError(f"repo id {repo_id!r} must be 'org/name'")
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="repan-publish-"))
    p = prepare(Path(checkpoint), metrics_json, tag=tag, license=license, repo_id=repo_id, folder=folder)
    _check_supersede(p.run.model, tag, supersede, manifest_dir)
    planned = _entry(p, source="hub", hf_hub_id=repo_id, revision="0" * 40, filename=DEFAULT_FILENAME)
    manifest.check_entry(planned, family=family, directory=manifest_dir)  # refused before anything is uploaded
    if dry_run:
        return PublishResult(planned, None, folder)
    api = HfApi(endpoint=endpoint, token=token, library_name="repan_zoo")
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
        for name in (DEFAULT_FILENAME, "config.json", "README.md")
    ]
    commit = None
    try:
        api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        info = api.create_commit(
            repo_id, operations, repo_type="model",
            commit_message=commit_message or f"{p.run.model}.{tag}: deploy weights, config and model card (repan_zoo)",
        )
        commit = info.oid
        meta = get_hf_file_metadata(hf_hub_url(repo_id, DEFAULT_FILENAME, revision=commit, endpoint=api.endpoint),
                                    token=token)
    except Exception as exc:  # noqa: BLE001 - the Hub's answers and transport failures become one typed error
        done = ("nothing was published and the manifest is unchanged" if commit is None else
                f"commit {commit} is on the Hub but its file could not be checked, and the manifest is unchanged")
        status = _http_status(exc)
        if status is not None:
            raise PublishError(_http_advice(status, repo_id, api.endpoint, exc, done)) from exc
        if not _unreachable(exc):
            raise
        raise PublishError(
            f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__}); {done}. Check the network and "
            "HF_ENDPOINT, then publish again (or use --dry-run / --bundle)"
        ) from exc
    etag = (meta.etag or "").strip('"').lower()
    if meta.commit_hash != commit or meta.size != p.size or etag not in (p.sha256, p.git_sha1):
        raise PublishError(
            f"the Hub's copy of {repo_id}@{commit}/{DEFAULT_FILENAME} (commit {meta.commit_hash}, {meta.size} bytes, "
            f"ETag {etag}) is not the uploaded file ({p.size} bytes, sha256 {p.sha256}); the manifest was NOT updated. "
            "Publish again"
        )
    entry = _entry(p, source="hub", hf_hub_id=repo_id, revision=commit, filename=DEFAULT_FILENAME)
    file = manifest.write_entry(entry, family=family, directory=manifest_dir, default=default)
    return PublishResult(entry, file, folder, commit, retire(p.run.model, supersede, manifest_dir=manifest_dir))


def _http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status of an error answer of the Hub (huggingface_hub's ``HfHubHTTPError``), else None."""
    from huggingface_hub.utils import HfHubHTTPError

    response = getattr(exc, "response", None) if isinstance(exc, HfHubHTTPError) else None
    return getattr(response, "status_code", None)


def _http_advice(status: int, repo_id: str, endpoint: str, exc: BaseException, done: str) -> str:
    """One line for an error answer of the Hub: what it said, what happened, what to do."""
    said = (getattr(exc, "server_message", None) or "").strip().splitlines()
    head = f"the Hub at {endpoint} answered HTTP {status}" + (f" ({said[0]})" if said else "") + f"; {done}"
    if status == 401:
        fix = ("the token is missing or not valid: log in (`hf auth login`, or `huggingface-cli login` with an older "
               "huggingface_hub) or set HF_TOKEN to a token with write access, then publish again")
    elif status in (403, 404):
        fix = (f"the token has no write access to {repo_id}: publish to a repo of your own user or organisation, "
               "or use a token with write access to it, then publish again")
    elif status == 429 or status >= 500:
        fix = "the Hub is busy or failing: publish again later (an identical commit is skipped)"
    else:
        fix = "publish again once the cause is fixed (or use --dry-run to check the files without uploading)"
    return f"{head}. {fix[0].upper()}{fix[1:]}"


def _unreachable(exc: BaseException) -> bool:
    """A connection-level failure (no route, refused, DNS, timeout, offline mode), as raised by
    huggingface_hub and its HTTP client (requests or httpx), rather than an answer of the Hub."""
    from huggingface_hub import utils as hf

    if isinstance(exc, (ConnectionError, TimeoutError, hf.OfflineModeIsEnabled)):
        return True
    name = type(exc).__name__
    module = type(exc).__module__
    return module.startswith(("httpx", "requests", "urllib3")) and any(
        word in name for word in ("Connect", "Timeout", "Network", "Proxy"))


def bundle(
    checkpoint,
    metrics_json,
    *,
    tag: str,
    license: str = "apache-2.0",
    family: Optional[str] = None,
    manifest_dir=None,
    max_bytes: int = 8 << 20,
    default: bool = False,
    supersede: Sequence[str] = (),
) -> PublishResult:
    """Copy a small deploy checkpoint into the package (:func:`repan_zoo.manifest.bundled_dir`,
    ``repan_zoo/weights/``) and write a ``source: bundled`` manifest entry: ``pretrained=True`` then
    works with no network. ``default`` and ``supersede`` as in :func:`publish`."""
    checkpoint = Path(checkpoint)
    size = checkpoint.stat().st_size if checkpoint.is_file() else 0
    if size > max_bytes:
        raise PublishError(
            f"{checkpoint} is {size} bytes; bundled weights ship in every install and are limited to {max_bytes} "
            "bytes: publish it to the Hub instead (or raise --max-bundle-mb)"
        )
    with tempfile.TemporaryDirectory(prefix="repan-bundle-") as tmp:
        p = prepare(checkpoint, metrics_json, tag=tag, license=license, repo_id="<bundled>/<bundled>", folder=Path(tmp))
        _check_supersede(p.run.model, tag, supersede, manifest_dir)
        target_dir = manifest.bundled_dir()
        filename = f"{p.run.model}-{tag}.safetensors"
        entry = _entry(p, source="bundled", filename=filename)
        manifest.check_entry(entry, family=family, directory=manifest_dir)  # a refusal before any file is written
        target = target_dir / filename
        old = target.read_bytes() if target.is_file() else None
        data = p.weights.read_bytes()
        atomic_write(target, lambda t: Path(t).write_bytes(data))
        try:
            file = manifest.write_entry(entry, family=family, directory=manifest_dir, default=default)
        except BaseException:  # the manifest was not written: the weight file goes back to what it was
            if old is None:
                target.unlink(missing_ok=True)
            else:
                atomic_write(target, lambda t: Path(t).write_bytes(old))
            raise
        return PublishResult(entry, file, target_dir, None, retire(p.run.model, supersede, manifest_dir=manifest_dir))


def superseded_names(model: str, supersede: Sequence[str], manifest_dir=None) -> List[Tuple[str, str]]:
    """``(model, tag)`` of each ``supersede`` item: a bare ``TAG`` is a tag of ``model``; ``MODEL.TAG``
    (timm's pretrained-tag syntax) names another model's entry, e.g. the weights of a layout that the new
    model's weights replace (``repan_mobileone_s0.fmnist_repan_kd`` by ``repan_mobileone_s0_w050``),
    when ``MODEL`` is a model (registered with timm, or listed in the manifest at ``manifest_dir``); otherwise the dots
    belong to a tag of ``model`` (``fmnist.r5``, :func:`repan_zoo.manifest.is_valid_tag`)."""
    import timm

    listed = {m for (m, _) in manifest.load_manifest(manifest_dir)}

    def split(item: str) -> Tuple[str, str]:
        head, dot, tail = item.partition(".")
        return (head, tail) if dot and (timm.is_model(head) or head in listed) else (model, item)

    return [split(item) for item in supersede]


def _check_supersede(model: str, tag: str, supersede: Sequence[str], manifest_dir) -> None:
    names = superseded_names(model, supersede, manifest_dir)
    if (model, tag) in names:
        raise PublishError(f"--supersede names the tag being published ({model}.{tag}); publishing under the same "
                           "tag already replaces that entry")
    unlisted = _unlisted(names, manifest_dir)
    if unlisted:
        raise PublishError(f"cannot supersede {unlisted[0]}: not in the weights manifest ({unlisted[1]}); "
                           "nothing was published")


def _unlisted(names: Sequence[Tuple[str, str]], manifest_dir) -> Optional[Tuple[str, str]]:
    """For the ``(model, tag)`` names the manifest at ``manifest_dir`` does not list: ``("m.t, ...",
    "listed tags of m: ...; ...")``, the two parts of the refusal; None when all are listed."""
    listed = set(manifest.load_manifest(manifest_dir))
    missing = [n for n in names if n not in listed]
    if not missing:
        return None
    tags_of = {m: sorted(t for (lm, t) in listed if lm == m) for m, _ in missing}
    return (", ".join(f"{m}.{t}" for m, t in missing),
            "; ".join(f"listed tags of {m}: {', '.join(tags) or 'none'}" for m, tags in tags_of.items()))


def retire(model: str, tags: Sequence[str], *, manifest_dir=None) -> List[WeightEntry]:
    """Take each of ``tags`` out of the manifest (:func:`repan_zoo.manifest.remove_entry`): a bare tag
    is ``model.<tag>``, ``MODEL.TAG`` another model's entry (:func:`superseded_names`). Then delete the
    bundled files that no remaining entry names. A Hub entry's files stay on the Hub, reachable by
    their pinned revision. Returns the removed entries. Raises
    :class:`~repan_zoo.errors.ManifestError` naming every entry that is not listed, before any is
    removed (all or nothing)."""
    names = superseded_names(model, tags, manifest_dir)
    unlisted = _unlisted(names, manifest_dir)
    if unlisted:
        raise manifest.ManifestError(f"{unlisted[0]} is not in the weights manifest; nothing was retired ({unlisted[1]})")
    removed = [manifest.remove_entry(m, t, directory=manifest_dir)[0] for m, t in names]
    still = {e.filename for e in manifest.load_manifest(manifest_dir).values() if e.source == "bundled"}
    for entry in removed:
        path = manifest.bundled_dir() / entry.filename
        if entry.source == "bundled" and entry.filename not in still and path.is_file():
            path.unlink()
    return removed
