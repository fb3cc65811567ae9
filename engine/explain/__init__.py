"""What a result means, for people and for their systems: heatmaps (`heatmap`, the numbers),
overlays (`overlay`, the X-ray with its heatmap), evaluation plots (`plots`), the batch HTML
report (`report`) and the DICOM Structured Report a PACS files beside the image (`sr`). Built
on the runtime; nothing in the runtime knows about them.

The heatmap choices live here, light, so the CLI can offer them without loading onnxruntime.
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["cam", "occlusion"]  # what runs
MethodChoice = Literal["cam", "occlusion", "auto"]  # what may be asked for
METHODS: tuple[MethodChoice, ...] = get_args(MethodChoice)
DEFAULT_GRID = 8
MAX_GRID = 16  # 256 extra model runs per image at most
