"""The safety net's reference data: the public API's signatures, the CLI's commands and options,
and a small store written by attnlab 0.1.0 (with its values), in ``tests/fixtures/``.

They were written once, before the package was restructured, by::

    python -m tests.snapshot --write

and must not be rewritten to make a test pass: a difference is a change of the public API, the
command line or the store format (``tests/test_safety_net.py`` says which).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import re
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
API_FILE = FIXTURES / "api.json"
CLI_FILE = FIXTURES / "cli.json"
STORE = FIXTURES / "store-v0.1.zarr"
STORE_VALUES = FIXTURES / "store-v0.1.npz"


def api_snapshot() -> dict[str, str]:
    """``attnlab.__all__`` -> the name's signature (or its type for constants)."""
    import attnlab

    out = {}
    for name in attnlab.__all__:
        value = getattr(attnlab, name)
        if callable(value):
            try:
                out[name] = f"{type(value).__name__}{inspect.signature(value)}"
            except (TypeError, ValueError):
                out[name] = type(value).__name__
        else:
            out[name] = type(value).__name__
    return out


def cli_snapshot() -> dict[str, list[str]]:
    """``attnlab --help``'s commands -> the option strings their ``--help`` lists."""
    from attnlab.tools import cli

    out = {}
    for name in ["", *sorted(cli.COMMANDS)]:
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            cli.main([name, "--help"] if name else ["--help"])
        out[name or "attnlab"] = sorted(
            set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", text.getvalue()))
        )
    return out


def store_values(path: Path) -> dict:
    """Every variable and coordinate of ``attnlab.load(path)`` and ``load_evaluation(path)``."""
    import numpy as np

    import attnlab

    values = {}
    for prefix, ds in (("runs", attnlab.load(path)), ("evaluation", attnlab.load_evaluation(path))):
        for name in list(ds.data_vars) + list(ds.coords):
            value = np.asarray(ds[name].values)
            values[f"{prefix}/{name}"] = value.astype(str) if value.dtype == object else value
    return values


def write_store(path: Path) -> None:
    """One recorded run of the tiny ModelScope pipeline (2 steps, level 0, its video) + its
    evaluation (dynamic degree and temporal flickering)."""
    import tempfile

    import torch

    import attnlab
    from attnlab.core.store import save_video
    from attnlab.models import load_pipeline
    from attnlab.models.tiny import tiny_path

    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(str(tiny_path("tiny-modelscope", Path(tmp) / "m")), progress=False)
        with attnlab.record(pipe, levels=[0]) as rec:
            out = pipe(
                "a polar bear playing drums",
                num_frames=8,
                height=64,
                width=48,
                num_inference_steps=2,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            )
        (rid,) = rec.save(path)
        frames = (out.frames[0] * 255).round().astype("uint8")
        save_video(path, rid, frames)
        attnlab.evaluate(path, metrics=["dynamic_degree", "temporal_flickering"], progress=False)


def main() -> None:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", action="store_true", help="(re)write the fixtures")
    args = p.parse_args()
    if not args.write:
        p.error("pass --write to rewrite the fixtures")
    FIXTURES.mkdir(exist_ok=True)
    API_FILE.write_text(json.dumps(api_snapshot(), indent=1, sort_keys=True) + "\n")
    CLI_FILE.write_text(json.dumps(cli_snapshot(), indent=1, sort_keys=True) + "\n")
    shutil.rmtree(STORE, ignore_errors=True)
    write_store(STORE)
    np.savez_compressed(STORE_VALUES, **store_values(STORE))


if __name__ == "__main__":
    main()
