"""`python -m greengate ...`: the same as the `greengate` command."""

import sys

from greengate.cli import main

sys.exit(main())
