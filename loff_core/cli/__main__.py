"""`python -m loff_core.cli` (and `torchrun -m loff_core.cli`): the `loff` command."""

import sys

from . import main

sys.exit(main())
