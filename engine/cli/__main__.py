"""`python -m engine.cli ...` is `pneumo ...`."""

import sys

from pneumo_onnx.engine.cli import main

sys.exit(main())
