"""The package's shape: what each layer may import, and what importing attnlab does."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnlab"

# the modules a processor runs in: they reach the controller through core.protocol's
# ProcessorHost only, never by importing it (not even for type checking)
PROCESSOR_LEVEL = ["processor", "joint", "joint_math", "joint_sites", "blocking", "protocol"]

# modules allowed past about 800 lines, each with its single job
LONG_MODULES = {
    "tools/cli.py": "the command line: every argparse definition and its command function",
    "models/organisms.py": "the organism model classes diffusers saves by module path",
    "data/video.py": "reading, writing and coercing video frames",
}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, TYPE_CHECKING blocks and function bodies included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("name", PROCESSOR_LEVEL)
def test_processor_level_modules_never_import_the_controller(name):
    imported = _imports(PACKAGE / "core" / f"{name}.py")
    assert not {m for m in imported if m.startswith("attnlab.core.control")}


def test_no_module_is_long_without_a_single_named_job():
    long = {
        str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
        for p in PACKAGE.rglob("*.py")
        if len(p.read_text().splitlines()) > 820
    }
    assert set(long) <= set(LONG_MODULES), long


def test_importing_attnlab_installs_no_import_hook_and_old_flat_paths_are_gone():
    code = (
        "import sys, importlib.util; before = list(sys.meta_path); import attnlab; "
        "assert sys.meta_path == before, sys.meta_path; "
        "assert importlib.util.find_spec('attnlab.organisms') is None; "
        "assert importlib.util.find_spec('attnlab.evaluator') is None; "
        "import attnlab.models.organisms, attnlab.data.evaluator"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
