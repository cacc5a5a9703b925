"""Where kanade-stream keeps what it builds (synthesized corpora, compiled streaming steps):
`$KANADE_STREAM_CACHE`, else `~/.cache/kanade_stream`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    cache = os.environ.get("KANADE_STREAM_CACHE")
    return Path(cache).expanduser() if cache else Path.home() / ".cache" / "kanade_stream"
