"""Training and evaluation code of the reference model: a developer tool run from a checkout,
never shipped in the wheel (the package holds only the model repository and its card)."""
