"""The peer servers of the `peers` suite: the same ONNX model and preprocessing served the
way each framework's own documentation shows. Each module runs under its framework's own
virtualenv (made by `benchmarks.peer_envs`), which has neither pneumo-onnx nor the harness's
other dependencies: these modules import only the standard library, numpy, Pillow,
onnxruntime and their framework."""
