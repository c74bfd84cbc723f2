"""A testing aid: faults injected into sweep cells through ``ATTNLAB_SWEEP_FAULT``.

``ATTNLAB_SWEEP_FAULT=KIND:TEXT[;KIND:TEXT]`` (KIND one of raise, interrupt, exit, hang)
injects a fault mid-recording into every cell whose prompt contains TEXT, so the reliability
tests can kill, interrupt or hang a real worker. Unset, it does nothing.

* :data:`FAULT_ENV`, :data:`FAULT_KINDS` - the variable's name and the kinds of fault
* ``_faults_for(prompt)`` - the faults that apply to a prompt
* ``_fault_kwargs(pipe, kind, steps)`` - pipeline callbacks that fire a fault after step 1
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

FAULT_ENV = "ATTNLAB_SWEEP_FAULT"
FAULT_KINDS = ("raise", "interrupt", "exit", "hang")


def _faults_for(prompt: str) -> list[str]:
    out = []
    for part in os.environ.get(FAULT_ENV, "").split(";"):
        kind, _, text = part.strip().partition(":")
        if kind in FAULT_KINDS and text and text in prompt:
            out.append(kind)
    return out


def _fault_kwargs(pipe: Any, kind: str, steps: int) -> dict[str, Any]:
    """Pipeline callbacks that fire ``kind`` after step 1 (mid-recording: step 0 is stored)."""
    at = min(1, steps - 1)

    def fire() -> None:
        if kind == "raise":
            raise RuntimeError(f"injected fault ({FAULT_ENV})")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "exit":
            os._exit(70)
        while True:  # hang
            time.sleep(1)

    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in params:

        def on_step_end(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            if i == at:
                fire()
            return kw

        return {"callback_on_step_end": on_step_end}
    if "callback" in params:

        def callback(i: int, t: Any, latents: Any) -> None:
            if i == at:
                fire()

        return {"callback": callback, "callback_steps": 1}
    fire()
    return {}
