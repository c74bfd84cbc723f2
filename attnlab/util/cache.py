"""Where attnlab caches things it builds or fetches (tiny models, sample clips, similarities)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
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


def saved_once(path: Path, write: Callable[[Path], None], marker: str = "model_index.json") -> Path:
    """``path``, calling ``write(tmp)`` and renaming ``tmp`` to ``path`` unless ``path/marker``
    exists: a half-written folder is never picked up and concurrent processes do not race."""
    if (path / marker).exists():
        return path
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")  # one per process
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    try:
        tmp.rename(path)  # atomic
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / marker).exists():
            raise
    return path
