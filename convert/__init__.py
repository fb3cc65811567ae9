"""pneumo-onnx conversion stage: Keras / TensorFlow models in, validated ONNX repositories out.

Needs the `convert` extra (TensorFlow, tf_keras, tf2onnx, onnx). Nothing in `engine/` imports
this package except the CLI's `convert` and `validate` commands, lazily.
"""

from __future__ import annotations
