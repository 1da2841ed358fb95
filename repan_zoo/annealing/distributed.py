"""Moved to :mod:`repan_zoo.runtime.distributed` (run infrastructure shared by every task); kept importable."""
from ..runtime.distributed import *  # noqa: F401,F403
from ..runtime.distributed import __all__  # noqa: F401
