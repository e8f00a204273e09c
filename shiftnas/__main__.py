"""`python -m shiftnas ...` is the `shiftnas` command."""

import sys

from shiftnas.nas.cli import main

sys.exit(main())
