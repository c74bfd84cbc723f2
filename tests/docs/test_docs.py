"""Docs and set-up stay true.

- the store-schema example runs, and the README's set-up is what CI runs;
- every path (``attnlab/...``, ``analyses/...``, ``docs/...``, ``tests/...``), relative link
  and dotted module name (``attnlab.x.y``) in a reference page exists;
- reference pages hold no history: no sessions, issue numbers or personal run folders (that
  goes to the dated notes in ``docs/notes/``, which this does not check).

Module names are resolved by reading the package's files, not by importing them, so a name
resolves only where a file (or a name defined in one) really is.
"""

from __future__ import annotations

import ast
import glob
import re
from functools import cache
from pathlib import Path

import pytest

import attnlab
from attnlab.core import dims as D
from attnlab.models.loading import _FLAT_LAYOUT_MODULES

ROOT = Path(__file__).resolve().parents[2]


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
    # every dimension the doc lists is a name from attnlab.core.dims
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


# --- reference pages name only what exists ---------------------------------------------------

PAGES = sorted([ROOT / "README.md", ROOT / "analyses" / "README.md", *(ROOT / "docs").glob("*.md")])
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]

# dotted names that are not modules: the entry-point group of model families
# the entry-point group, and the module paths of 0.1's flat layout that docs name as refused in
# saved folders (load_pipeline's error names their replacements)
NOT_MODULES = {"attnlab.families", *_FLAT_LAYOUT_MODULES}

_PATH = re.compile(r"(?<![\w/.~$-])((?:attnlab|analyses|docs|tests)/[\w./<>*{},$-]*)")
_MODULE = re.compile(r"(?<![\w/.-])attnlab(?:\.[A-Za-z_]\w*)+")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_HISTORY = re.compile(
    r"\bsession|~/\.cache/attnlab-train|/work/scratch|\bissue [0-9]|(?<![\w&])#[0-9]+\b"
    r"|\b(?:stf32b?|zt32n?)\b",
    re.I,
)


def _globs(ref: str) -> list[str]:
    """Glob patterns for a path as docs write it: <placeholder>, $VAR, {a,b} and * allowed."""
    ref = ref.rstrip(".,:;")
    ref = re.sub(r"<[^>]*>|\$\{?\w*\}?", "*", ref)
    if m := re.search(r"\{([^{}]*)\}", ref):
        return [
            g
            for alt in m.group(1).split(",")
            for g in _globs(ref[: m.start()] + alt + ref[m.end() :])
        ]
    return [ref]


def _exists(ref: str) -> bool:
    return all(glob.glob(str(ROOT / g)) for g in _globs(ref))


@cache
def _defined(path: Path) -> frozenset[str]:
    """Names a module file defines at top level (also under if/try), its __all__ and lazy tables."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = [t.id for t in targets if isinstance(t, ast.Name)]
                names.update(named)
                value = node.value
                if isinstance(value, (ast.List, ast.Tuple)) and "__all__" in named:
                    names.update(e.value for e in value.elts if isinstance(e, ast.Constant))
                # a lazy export table {"name": "attnlab.module"} (the old-path aliases excluded)
                if isinstance(value, ast.Dict) and "_MOVED" not in named:
                    vals = [v.value for v in value.values if isinstance(v, ast.Constant)]
                    if vals and all(str(v).startswith("attnlab.") for v in vals):
                        names.update(k.value for k in value.keys if isinstance(k, ast.Constant))
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)

    visit(ast.parse(path.read_text()).body)
    return frozenset(names)


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _resolves(dotted: str) -> bool:
    """attnlab.x.y is a module file, or its longest module prefix defines the next name."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if (f := _module_file(parts[:i])) is not None:
            return i == len(parts) or parts[i] in _defined(f)
    return False


def _refs(pattern: re.Pattern, page: Path) -> set[str]:
    return {m.group(1) if m.groups() else m.group(0) for m in pattern.finditer(page.read_text())}


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_reference_pages_name_existing_paths(page):
    missing = sorted(r for r in _refs(_PATH, page) if not _exists(r))
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_reference_pages_name_existing_modules(page):
    names = _refs(_MODULE, page) - NOT_MODULES
    missing = sorted(n for n in names if not _resolves(n))
    assert not missing, (
        f"{page.relative_to(ROOT)} names modules or attributes that do not exist: {missing}"
    )


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_reference_pages_link_to_existing_files(page):
    links = {
        r
        for r in _refs(_LINK, page)
        if not re.match(r"[a-z]+:", r)  # http:, https:, mailto:
    }
    missing = sorted(r for r in links if not (page.parent / r).exists())
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_reference_pages_hold_no_history(page):
    hits = [
        f"line {n}: {m.group(0)!r}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for m in _HISTORY.finditer(line)
    ]
    assert not hits, f"{page.relative_to(ROOT)}: history belongs in docs/notes/: {hits}"


def test_module_resolution_reads_files_not_the_import_system():
    assert _resolves("attnlab.core.sites.PE_KINDS")
    assert _resolves("attnlab.load")  # a lazy public name
    assert _resolves("attnlab.models.organisms")
    assert not _resolves("attnlab.no_such_module")
    assert not _resolves("attnlab.core.sites.no_such_name")
    assert _globs("a/{b,c}/<m>/$1.json") == ["a/b/*/*.json", "a/c/*/*.json"]
