"""`python -m loupe build CONFIG` is `loupe build CONFIG`, for environments without the console script."""

import sys

from loupe.jobs.cli import main

sys.exit(main())
