"""Moved to :mod:`repan_zoo.runtime.checkpointing` (run infrastructure shared by every task); kept importable."""
from ..runtime.checkpointing import *  # noqa: F401,F403
from ..runtime.checkpointing import __all__  # noqa: F401
