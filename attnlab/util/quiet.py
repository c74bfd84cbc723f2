"""Scoped silencing of library messages that are known to be harmless for attnlab's use.

Only the exact messages listed here are dropped, only while attnlab's own loading or decoding
code runs; every other warning and log line still reaches the user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

#: (logger name, message pattern): diffusers messages that do not concern attnlab's users
HARMLESS_LOGS: tuple[tuple[str, str], ...] = (
    # TextToVideoSDPipeline (ModelScope layout) works; attnlab tests it on every diffusers it allows
    ("diffusers.pipelines.pipeline_utils", r"The \w+ has been deprecated and will not receive"),
    # an empty list of modules to keep in float32: the cast changes nothing
    (
        "diffusers.models.modeling_utils",
        r"There are modules in \w+ that should be kept in float32: \[\]",
    ),
)

#: FFmpeg lines decord prints to the C stderr for clips it decodes correctly (the "box" sample)
HARMLESS_FFMPEG: tuple[str, ...] = (
    r"A non-intra slice in an IDR NAL unit",
    r"decode_slice_header error",
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextlib.contextmanager
def quiet_library_logs(rules: Sequence[tuple[str, str]] = HARMLESS_LOGS) -> Iterator[None]:
    """Drop log records matching ``rules`` (logger name, regex) inside the block; other records
    of the same loggers pass. The filters are removed on exit, also after an exception."""
    installed = []
    for name, pattern in rules:
        logger = logging.getLogger(name)
        f = _DropMatching(pattern)
        logger.addFilter(f)
        installed.append((logger, f))
    try:
        yield
    finally:
        for logger, f in installed:
            logger.removeFilter(f)


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """Turn off the progress bars diffusers, transformers and huggingface_hub draw while loading
    (pipeline components, weights, downloads) inside the block; each library's setting is
    restored on exit, also after an exception."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    switches = []
    for lib in (diffusers_logging, transformers_logging):
        if lib.is_progress_bar_enabled():
            lib.disable_progress_bar()
            switches.append(lib.enable_progress_bar)
    if not hub_utils.are_progress_bars_disabled():
        hub_utils.disable_progress_bars()
        switches.append(hub_utils.enable_progress_bars)
    try:
        yield
    finally:
        for enable in switches:
            enable()


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[str] = HARMLESS_FFMPEG) -> Iterator[None]:
    """Capture what C libraries write to file descriptor 2 inside the block and pass on every
    line that matches none of ``patterns`` (on exit, also after an exception)."""
    fd = 2  # where C libraries write, whatever Python's sys.stderr is at the moment
    try:
        os.fstat(fd)
    except OSError:  # no file descriptor 2 (e.g. an embedded interpreter)
        yield
        return
    drop = re.compile("|".join(f"(?:{p})" for p in patterns))
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line
                for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                if not drop.search(line)
            ]
            if kept:
                os.write(fd, "".join(kept).encode())
