"""`python -m loupe.jobs.cli ...` is the `loupe` command."""

import sys

from loupe.jobs.cli import main

sys.exit(main())
