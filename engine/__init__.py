"""The TensorFlow-free engine of pneumo-onnx (`pneumo_onnx.engine`): runtime, model
repository, CLI, server. Its public door is the top package: `from pneumo_onnx import Engine`.

Importing it must never import tensorflow, keras or tf2onnx (tested).
"""
