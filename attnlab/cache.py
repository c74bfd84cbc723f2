"""Where attnlab caches things it builds or fetches (tiny models, sample clips, similarities)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$ATTNLAB_CACHE/<parts>`` or the user cache dir; created on demand."""
    root = os.environ.get("ATTNLAB_CACHE")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("attnlab")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
