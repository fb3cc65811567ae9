"""`python -m engine.cli ...` is `pneumo ...`."""

import sys

from engine.cli import main

sys.exit(main())
