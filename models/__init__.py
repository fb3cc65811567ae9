"""The reference model and its converted model repository.

Installed as the package `pneumo_onnx.models` so that `pip install .` carries the default model
(`pneumonia/<version>/model.onnx`) as package data; in a checkout it is this folder.
"""
