"""Moved to :mod:`repan_zoo.runtime.distributed` (run infrastructure shared by every task); kept importable
with a ``DeprecationWarning``."""
import warnings

from ..runtime.distributed import *  # noqa: F401,F403
from ..runtime.distributed import __all__  # noqa: F401

warnings.warn("repan_zoo.annealing.distributed moved to repan_zoo.runtime.distributed; import it from there",
              DeprecationWarning, stacklevel=2)
