"""The model repository: the seam between `convert` (which writes it) and the engine (which
reads it). A Triton-style folder `REPO/<name>/<version>/` holding the variant files named in
`variants.VARIANTS` and a `manifest.json` (`manifest`); `resolve` finds the file to load;
`cam` is the class-activation-map spec a model may carry in its metadata.
"""
