"""``python -m attnlab.tools.bench [--config mid] ...``: ``attnlab bench`` with the same options.

``--memory-child TARGET SPEC`` runs one peak-memory measurement in this fresh process instead
(:func:`attnlab.tools.bench.harness.memory_child` starts it).
"""

import sys

if sys.argv[1:2] == ["--memory-child"]:
    from attnlab.tools.bench.harness import child_main

    sys.exit(child_main(sys.argv[2:]))

from attnlab.tools.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
