"""``attnlab.metrics``: the attention-map and video diagnostics of :mod:`attnlab.data.metrics`
under a short name (the same objects): ``dispersion``, ``band_spectrum``, ``echo_period``,
``echo_peaks``, ``sink_score``, ``repetition_score``, ``lag_similarity``, ``diagonalness``, ...

    from attnlab import metrics as M
    M.dispersion(ds.probs, window=16)["mass_beyond"]
"""

from __future__ import annotations

from attnlab.data.metrics import (
    PERIOD,
    REPETITION_FLAG,
    band_concentration,
    band_profile,
    band_spectrum,
    diagonalness,
    dispersion,
    echo_peaks,
    echo_period,
    gaussian_prior,
    lag_similarity,
    map_distance,
    minmax_normalise,
    repetition_score,
    resample_maps,
    row_entropy,
    sink_score,
)

__all__ = [
    "PERIOD",
    "REPETITION_FLAG",
    "band_concentration",
    "band_profile",
    "band_spectrum",
    "diagonalness",
    "dispersion",
    "echo_peaks",
    "echo_period",
    "gaussian_prior",
    "lag_similarity",
    "map_distance",
    "minmax_normalise",
    "repetition_score",
    "resample_maps",
    "row_entropy",
    "sink_score",
]
