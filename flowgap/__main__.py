"""`python -m flowgap ...` is the `flowgap` command."""

import sys

from ._cli import main

sys.exit(main())
