"""``python -m edgemm``: the ``edgemm`` command."""

import sys

from edgemm.runtime.cli import main

sys.exit(main())
