"""Docs and set-up stay true: the store-schema example runs, README and CI agree."""

from __future__ import annotations

import re
from pathlib import Path

import attnlab
from attnlab.core import dims as D

ROOT = Path(__file__).resolve().parents[1]


def test_store_schema_example_runs_with_plain_xarray(ms_pipe, gen, tmp_path, monkeypatch, capsys):
    with attnlab.record(ms_pipe, store=tmp_path / "run.zarr"):
        gen(ms_pipe)
    text = (ROOT / "docs" / "store-schema.md").read_text()
    code = re.search(
        r"## Reading a store with plain xarray.*?```python\n(.*?)```", text, re.S
    ).group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "store-schema.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'reduction': 'mean'" in out and "(8, 8)" in out
    # every dimension the doc lists is a name from attnlab.dims
    for name in re.findall(r"^\| `(\w+)`", text, re.M):
        assert name in vars(D).values(), name


def test_readme_setup_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up\s+```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the README's set-up is exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = block
    assert install in ci
    assert re.search(re.escape(test) + r"( |$)", ci, re.M)
    assert "attnlab demo" in readme
