"""Tools: the ``attnlab`` command line and the benchmarks."""
