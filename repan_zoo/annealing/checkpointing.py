"""Moved to :mod:`repan_zoo.runtime.checkpointing` (run infrastructure shared by every task); kept importable
with a ``DeprecationWarning``."""
import warnings

from ..runtime.checkpointing import *  # noqa: F401,F403
from ..runtime.checkpointing import __all__  # noqa: F401

warnings.warn("repan_zoo.annealing.checkpointing moved to repan_zoo.runtime.checkpointing; import it from there",
              DeprecationWarning, stacklevel=2)
