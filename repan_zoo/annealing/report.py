"""Moved to :mod:`repan_zoo.runtime.report` (run infrastructure shared by every task); kept importable."""
from ..runtime.report import *  # noqa: F401,F403
from ..runtime.report import __all__  # noqa: F401
