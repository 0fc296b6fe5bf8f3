"""Build markers: a built output (task data, a model) sits beside a `build.json` holding the hash
of the settings it depends on, so a rerun with unchanged settings reuses it and a changed setting
rebuilds it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def settings_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_built(directory: Path, digest: str) -> bool:
    marker = directory / "build.json"
    return marker.exists() and json.loads(marker.read_text()).get("hash") == digest


def mark_built(directory: Path, digest: str, **info: Any) -> None:
    (directory / "build.json").write_text(json.dumps({"hash": digest, **info}, indent=2, default=str))
