"""`python -m engine.runtime.sandbox REQUESTS REPLIES HARD ALLOWANCE PRELOAD`: a worker."""

import sys

from pneumo_onnx.engine.runtime.sandbox.worker import main

main(sys.argv[1:])
