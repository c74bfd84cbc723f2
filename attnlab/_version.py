"""The package version: one definition, read by ``attnlab.__version__``, the store's provenance
and the packaging metadata (pyproject.toml ``[tool.setuptools.dynamic]``)."""

__version__ = "0.2.0"
