"""``attnlab.metrics``: the attention-map and video diagnostics of :mod:`attnlab.data.metrics`
under a short name (the same objects): ``dispersion``, ``band_spectrum``, ``echo_period``,
``echo_peaks``, ``sink_score``, ``repetition_score``, ``lag_similarity``, ``diagonalness``, ...

    from attnlab import metrics as M
    M.dispersion(ds.probs, window=16)["mass_beyond"]
"""

from __future__ import annotations

# the same objects, and the same public names: what attnlab.data.metrics exports
from attnlab.data.metrics import *  # noqa: F403
from attnlab.data.metrics import __all__ as __all__
