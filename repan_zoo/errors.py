"""Typed errors of repan_zoo. Every message names the problem and the fix."""
from __future__ import annotations


class RepanError(Exception):
    """Base class of all repan_zoo errors."""


class LambdaRangeError(RepanError, ValueError):
    """λ (the attach rate of Eq. 3) outside [0, 1] or not finite."""


class UnfusableBranchError(RepanError, ValueError):
    """A branch / stride / dilation / channel combination that cannot be fused into one conv."""


class NoRepBlocksError(RepanError, ValueError):
    """A conversion was asked of a model that holds no RepBlock."""


class ReparameterizationError(RepanError, RuntimeError):
    """A conversion changed the model's function beyond fp32 rounding.

    Attributes: ``worst_block`` (qualified name), ``rel_error`` (max relative error of
    that block), ``model_rel_error`` (whole model) and ``tolerance``.
    """

    def __init__(self, message: str, *, worst_block=None, rel_error=None, model_rel_error=None, tolerance=None):
        super().__init__(message)
        self.worst_block = worst_block
        self.rel_error = rel_error
        self.model_rel_error = model_rel_error
        self.tolerance = tolerance


class CalibrationError(RepanError, ValueError):
    """BN calibration refused: a batch that is empty, not finite, or that the model cannot run. The
    model is left exactly as it was."""


class CheckpointError(RepanError, ValueError):
    """A checkpoint that cannot be loaded into the model as asked (wrong form, architecture, truncated)."""


class StateDictMismatchError(CheckpointError, RuntimeError):
    """``load_state_dict`` with a state dict that does not fit the model (another architecture,
    head or width): a :class:`CheckpointError` and, as PyTorch raises, a ``RuntimeError``. The
    model keeps every tensor it had."""


class ExportError(RepanError, RuntimeError):
    """An export that would not compute the model: unfused branches left in the graph, or an
    exported file whose outputs differ from torch beyond fp32 rounding.

    Attributes: ``modules`` (qualified names of the offending modules, if any) and
    ``rel_error`` (the measured relative error, if the comparison failed).
    """

    def __init__(self, message: str, *, modules=None, rel_error=None):
        super().__init__(message)
        self.modules = list(modules or [])
        self.rel_error = rel_error


class DatasetNotFoundError(RepanError, FileNotFoundError):
    """A dataset's files are missing or unreadable; the message names the files and how to get them."""


class TrainingDivergedError(RepanError, FloatingPointError):
    """The training loss became NaN/inf. Attributes: ``cycle``, ``epoch``, ``step`` (1-based) and
    ``checkpoint`` (the last good checkpoint directory, left untouched, or None)."""

    def __init__(self, message: str, *, cycle=None, epoch=None, step=None, checkpoint=None):
        super().__init__(message)
        self.cycle = cycle
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


class RecipeError(RepanError, ValueError):
    """An invalid or inconsistent training recipe (arguments that cannot work together)."""


# -- weights hub (repan_zoo.manifest, repan_zoo.hub) --------------------------------------------
class ManifestError(RepanError, ValueError):
    """A weights-manifest file or entry that does not follow the schema (``weights_manifest/README.md``)."""


class WeightsError(RepanError):
    """Pretrained weights that cannot be provided as asked. ``model`` and ``filename`` name what was asked for."""

    def __init__(self, message: str, *, model=None, filename=None):
        super().__init__(message)
        self.model = model
        self.filename = filename

    def __str__(self) -> str:  # OSError-based subclasses would otherwise format ``filename`` their way
        return str(self.args[0]) if self.args else ""


class UnknownTagError(WeightsError, LookupError, RuntimeError):
    """The model has no pretrained weights or config of that tag (``available`` lists the tags it
    has). Also a ``RuntimeError``: what timm raises for an invalid tag, so code written against timm
    keeps catching it."""

    def __init__(self, message: str, *, model=None, filename=None, available=()):
        super().__init__(message, model=model, filename=filename)
        self.available = tuple(available)


class WeightsNotFoundError(WeightsError, LookupError):
    """No weights where the manifest / config points: no manifest entry, or the Hub answered 404 (repo or file)."""


class UnknownRevisionError(WeightsNotFoundError):
    """The pinned revision (commit) does not exist in the Hub repo."""


class OfflineError(WeightsError, ConnectionError):
    """The weights are not in the local cache and the Hub cannot be reached (offline mode or no network)."""


class WeightsDownloadError(WeightsError, OSError):
    """The Hub could be reached but the transfer failed (server error, broken connection)."""


class IntegrityError(WeightsError):
    """A weights file whose bytes are not the published ones. It was not loaded, and was removed from the cache."""

    def __init__(self, message: str, *, model=None, filename=None, expected=None, actual=None):
        super().__init__(message, model=model, filename=filename)
        self.expected = expected
        self.actual = actual


class ChecksumMismatchError(IntegrityError):
    """The file's sha256 (or git blob hash) differs from the published one: corrupted or tampered with."""


class SizeMismatchError(IntegrityError):
    """The file's size differs from the published size."""


class TruncatedDownloadError(SizeMismatchError):
    """The transfer ended early: fewer bytes than published arrived."""


class PublishError(RepanError, ValueError):
    """A publish request that would put unverifiable or incomplete weights on the Hub (no metrics, no exactness...)."""


# -- model registry (repan_zoo.models) -----------------------------------------------------------
class ModelConfigError(RepanError, ValueError):
    """Model-construction arguments that cannot work together or are out of range
    (e.g. ``deploy=True`` with ``branches=``, ``width_mult<=0``, a ``_w025`` name with another width)."""


class UnknownModelArgError(ModelConfigError, TypeError):
    """A keyword argument the ``repan_*`` models do not take; the message lists those they do."""


class UnknownModelError(ModelConfigError, LookupError):
    """A model name timm has not registered; the message lists the registered ``repan_*`` models."""


# -- detection (repan_zoo.detection) ---------------------------------------------------------------
class FeatureStrideError(RepanError, ValueError):
    """A backbone whose feature levels cannot feed a feature pyramid: too few levels, strides that
    do not increase by powers of two, or maps whose measured size disagrees with their stride."""


class CocoFormatError(RepanError, ValueError):
    """A file that is not a valid COCO instances file. ``path`` names the file, ``field`` the
    missing or invalid entry (e.g. ``annotations[3].bbox``)."""

    def __init__(self, message: str, *, path=None, field=None):
        super().__init__(message)
        self.path = path
        self.field = field


# -- run directories (repan-train, repan-detect) ---------------------------------------------------
class RunLockedError(RepanError, RuntimeError):
    """Another live process is writing the same run directory. ``path`` is the lock file and
    ``pid`` the holder's process id (None when it could not be read)."""

    def __init__(self, message: str, *, path=None, pid=None):
        super().__init__(message)
        self.path = path
        self.pid = pid


# -- INT8 deploy (repan_zoo.quantize) ------------------------------------------------------------
class MissingExtraError(RepanError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it
    (e.g. ``pip install 'repan-zoo[quant]'`` for torchao)."""


class QuantizationError(RepanError, RuntimeError):
    """An INT8 model that may not be used: a multi-branch (train-form) model handed to the
    quantizer, unusable calibration batches, or a quantized model whose outputs disagree with
    the fp32 model beyond the thresholds. ``check`` holds the measured agreement (or None)."""

    def __init__(self, message: str, *, check=None):
        super().__init__(message)
        self.check = check


class UncalibratedBNWarning(UserWarning):
    """A train-form Rep block runs in training mode on BN statistics that no data estimated: deploy
    weights unfolded into the train form (``pretrained=True``, :func:`repan_zoo.unfold` of loaded deploy
    weights) restore each trunk BN with statistics invented by the Restore rule, and batch statistics then
    replace them, so training starts from another function. :func:`repan_zoo.calibrate_bn` is the fix."""
