"""RepAn Zoo: re-parameterizable CNNs for timm, trained with RepAn (CVPR'24).

Entry points: :func:`reparameterize` (train → deploy), :func:`unfold` (deploy → trainable
multi-branch, same function; how: an :class:`Expansion`), :func:`calibrate_bn` and :func:`set_lambda`.
"""
__version__ = "0.1.0"

from . import algebra
from .blocks import BRANCH_KINDS, RepBlock, register_branch, rep_blocks
from .convert import calibrate_bn, reparameterize, set_lambda, unfold
from .expansion import Expansion
from .errors import (
    CheckpointError,
    StateDictMismatchError,
    LambdaRangeError,
    NoRepBlocksError,
    RepanError,
    ReparameterizationError,
    UncalibratedBNWarning,
    UnfusableBranchError,
)
from . import probe_adapters  # registers torchvision's detectors with the exactness checks (verify)
from . import models  # registers the repan_* models in timm (import last: it uses the core above)

__all__ = [
    "__version__",
    "algebra",
    "BRANCH_KINDS",
    "RepBlock",
    "register_branch",
    "reparameterize",
    "unfold",
    "Expansion",
    "calibrate_bn",
    "set_lambda",
    "rep_blocks",
    "RepanError",
    "LambdaRangeError",
    "NoRepBlocksError",
    "ReparameterizationError",
    "UnfusableBranchError",
    "CheckpointError",
    "StateDictMismatchError",
    "UncalibratedBNWarning",
]
