"""``python -m repan_zoo.cli`` = ``repan``."""
import sys

from . import main

sys.exit(main())
