"""Moved to :mod:`repan_zoo.runtime.report` (run infrastructure shared by every task); kept importable
with a ``DeprecationWarning``."""
import warnings

from ..runtime.report import *  # noqa: F401,F403
from ..runtime.report import __all__  # noqa: F401

warnings.warn("repan_zoo.annealing.report moved to repan_zoo.runtime.report; import it from there",
              DeprecationWarning, stacklevel=2)
