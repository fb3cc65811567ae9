"""Where API and admin keys come from: the environment (`PNEUMO_API_KEYS`, `PNEUMO_ADMIN_KEYS`,
comma-separated) and key files (one key per line, `#` comments). Kept apart from
`front.security`, which needs FastAPI, so that `pneumo serve --print-config` and the settings
sources read keys without the server stack loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pneumo_onnx.engine.errors import UsageError

API_KEY_ENV = "PNEUMO_API_KEYS"
ADMIN_KEY_ENV = "PNEUMO_ADMIN_KEYS"
MIN_KEY_LENGTH = 16


def load_api_keys(
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    variable: str = API_KEY_ENV,
) -> list[str]:
    """Every key configured in `variable` and `key_file`; an empty list means none."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(variable, "").split(",") if k.strip()]
    if key_file is not None:
        try:
            lines = Path(key_file).read_text().splitlines()
        except OSError as e:
            name = Path(key_file).name
            raise UsageError(f"cannot read the API key file {name}: {e.strerror}") from e
        keys += [s for line in lines if (s := line.split("#", 1)[0].strip())]
    short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
    if short:
        raise UsageError(
            f"API keys must be at least {MIN_KEY_LENGTH} characters ({len(short)} too short)"
        )
    return keys
