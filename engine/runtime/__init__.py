"""The TensorFlow-free core: decode and preprocess images, run onnxruntime, turn scores into
typed results (`Engine`), and the evaluation metrics. Imports only the ground floor and the
model repository; everything above it (pictures, offline jobs, CLI, server) builds on it.
"""
