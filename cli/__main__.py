"""`python -m unmaskd.cli ...`: the `unmaskd` command without its console script."""

import sys

from unmaskd.cli.main import main

sys.exit(main())
