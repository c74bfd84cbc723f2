"""Length-extrapolation diagnostics against hand computations on constructed maps: dispersion
(banded Toeplitz map), the band spectrum and echo peaks (a map with echoes at period P), the
sink score (a sink map per layer and head), and the repetition score (looped and unlooped
world clips)."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
import xarray as xr

from attnlab.core import dims as D
from attnlab.data.metrics import (
    PERIOD,
    REPETITION_FLAG,
    band_spectrum,
    dispersion,
    echo_peaks,
    echo_period,
    lag_similarity,
    repetition_score,
    sink_score,
)
from attnlab.data.world import world_clip


def _toeplitz(n: int, g) -> np.ndarray:
    """Row-normalised ``T[i, j] = g(|i - j|)``."""
    m = np.array([[g(abs(i - j)) for j in range(n)] for i in range(n)], dtype=np.float64)
    return m / m.sum(1, keepdims=True)


def _maps(m: np.ndarray) -> xr.DataArray:
    return xr.DataArray(m, dims=[D.QUERY, D.KEY])


# ---- dispersion ------------------------------------------------------------------------------
def test_dispersion_of_a_banded_toeplitz_map_equals_the_hand_sums():
    n, w = 12, 3
    m = _toeplitz(n, lambda d: 0.5**d)
    got = dispersion(_maps(m), w)
    beyond = [sum(m[i, j] for j in range(n) if abs(i - j) > w) for i in range(n)]
    ent = [-sum(p * math.log(p) for p in m[i] if p > 0) / math.log(n) for i in range(n)]
    assert float(got["mass_beyond"]) == pytest.approx(sum(beyond) / n, abs=1e-12)
    assert float(got["entropy"]) == pytest.approx(sum(ent) / n, abs=1e-12)
    # the uniform map: (N - W - 1)(N - W) / N^2 beyond, entropy 1
    uni = dispersion(_maps(np.full((n, n), 1 / n)), w)
    assert float(uni["mass_beyond"]) == pytest.approx((n - w - 1) * (n - w) / n**2, abs=1e-12)
    assert uni.attrs["uniform_mass_beyond"] == pytest.approx((n - w - 1) * (n - w) / n**2)
    assert float(uni["entropy"]) == pytest.approx(1.0, abs=1e-12)
    # a band of half-width W stays inside: nothing beyond
    band = _toeplitz(n, lambda d: 1.0 if d <= w else 0.0)
    assert float(dispersion(_maps(band), w)["mass_beyond"]) == 0.0


def test_dispersion_broadcasts_and_checks_its_input():
    stack = xr.DataArray(
        np.stack([_toeplitz(8, lambda d: 0.5**d), np.full((8, 8), 1 / 8)]),
        dims=[D.LAYER, D.QUERY, D.KEY],
    )
    assert dispersion(stack, 2)["mass_beyond"].dims == (D.LAYER,)
    with pytest.raises(ValueError, match="window must be an integer >= 0"):
        dispersion(stack, -1)
    with pytest.raises(ValueError, match="non-negative entries"):
        dispersion(-stack, 2)


# ---- band spectrum and echoes ------------------------------------------------------------------
def _hand_spectrum(m: np.ndarray, periods, detrend: str = "monotone") -> list[float]:
    """Band profile by loops; trend from scipy's isotonic regression (non-increasing) or
    numpy's polyfit; the DFT at each period by an explicit complex sum."""
    from scipy.optimize import isotonic_regression

    n = m.shape[0]
    b = [
        np.mean([m[i, j] for i in range(n) for j in range(n) if abs(i - j) == d]) for d in range(n)
    ]
    d = np.arange(1, n, dtype=np.float64)
    if detrend == "monotone":
        trend = isotonic_regression(b[1:], increasing=False).x
    else:
        slope, icept = np.polyfit(d, b[1:], 1)
        trend = icept + slope * d
    x = [b[k] - trend[k - 1] for k in range(1, n)]
    energy = sum(v * v for v in x)
    out = []
    for p in periods:
        z = sum(x[k - 1] * cmath.exp(-2j * math.pi * k / p) for k in range(1, n))
        out.append(abs(z) ** 2 / ((n - 1) * energy))
    return out


@pytest.mark.parametrize("detrend", ["monotone", "linear"])
def test_band_spectrum_of_a_map_with_echoes_equals_the_hand_dft_and_peaks_at_p(detrend):
    n, p = 32, 6
    m = _toeplitz(n, lambda d: math.exp(-d) + (0.6 if d and d % p == 0 else 0.0))
    spec = band_spectrum(_maps(m), detrend=detrend)
    periods = list(range(2, n))
    assert list(spec[PERIOD].values) == periods
    np.testing.assert_allclose(spec.values, _hand_spectrum(m, periods, detrend), atol=1e-12)
    assert float(spec.min()) >= 0 and float(spec.max()) <= 1
    ep = echo_period(_maps(m), detrend=detrend)
    assert float(ep) == p and float(ep["echo_power"]) == pytest.approx(float(spec.max()))
    peaks = echo_peaks(_maps(m))
    assert list(np.flatnonzero(peaks.values)) == [6, 12, 18, 24, 30]
    # non-integer periods too
    np.testing.assert_allclose(
        band_spectrum(_maps(m), [5.5, 6.25], detrend=detrend).values,
        _hand_spectrum(m, [5.5, 6.25], detrend),
        atol=1e-12,
    )


def test_a_map_that_only_decays_has_no_echo():
    m = _toeplitz(16, lambda d: 0.7**d)
    assert not echo_peaks(_maps(m)).values.any()
    assert float(band_spectrum(_maps(m)).max()) == 0.0  # the monotone fit is the profile
    assert float(echo_period(_maps(m))["echo_power"]) == 0.0
    echoes = _toeplitz(16, lambda d: 0.7**d + (0.3 if d and d % 5 == 0 else 0.0))
    assert float(echo_period(_maps(echoes))) == 5.0


def test_band_spectrum_of_lazily_loaded_maps_equals_that_of_loaded_ones():
    """Maps from ``attnlab.load`` are dask-backed: the spectrum and echoes are the same."""
    m = _toeplitz(16, lambda d: 0.7**d + (0.3 if d and d % 5 == 0 else 0.0))
    lazy = _maps(m).chunk()
    assert lazy.chunks is not None
    np.testing.assert_array_equal(band_spectrum(lazy).values, band_spectrum(_maps(m)).values)
    assert float(echo_period(lazy)) == 5.0


def test_band_spectrum_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 4 frames"):
        band_spectrum(_maps(np.eye(3)))
    with pytest.raises(ValueError, match="detrend must be one of monotone, linear, mean, none"):
        band_spectrum(_maps(np.eye(8)), detrend="cubic")
    with pytest.raises(ValueError, match="periods must be positive"):
        band_spectrum(_maps(np.eye(8)), [0, 3])


# ---- sink ---------------------------------------------------------------------------------
def test_sink_score_per_layer_and_head_equals_the_hand_means():
    n = 10
    strengths = np.array([[0.0, 0.5], [0.8, 0.95]])  # [layer, head]: mass sent to frame 0
    maps = np.empty((2, 2, n, n))
    for a in range(2):
        for h in range(2):
            s = strengths[a, h]
            m = np.full((n, n), (1 - s) / n)
            m[:, 0] += s
            maps[a, h] = m
    da = xr.DataArray(maps, dims=[D.LAYER, D.HEAD, D.QUERY, D.KEY])
    got = sink_score(da)
    assert got.dims == (D.LAYER, D.HEAD)
    for a in range(2):
        for h in range(2):
            want = sum(maps[a, h, i, 0] for i in range(1, n)) / (n - 1)
            assert float(got[a, h]) == pytest.approx(want, abs=1e-12)
    assert float(got[0, 0]) == pytest.approx(1 / n)  # uniform: 1/N
    # another key frame, by position
    assert float(sink_score(da, frame=3)[1, 1]) == pytest.approx((1 - 0.95) / n)
    with pytest.raises(ValueError, match=r"frame must be a key frame index in 0\.\.9"):
        sink_score(da, frame=10)


# ---- repetition --------------------------------------------------------------------------------
def _hand_repetition(video01: np.ndarray, train: int) -> tuple[float, int]:
    f = len(video01)
    x = video01.reshape(f, -1).astype(np.float64)
    x = x - x.mean(0)
    best, lag_best = -2.0, -1
    for lag in range(train, f):
        sims = []
        for i in range(f - lag):
            a, b = x[i], x[i + lag]
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            sims.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0)
        s = sum(sims) / len(sims)
        if s > best:
            best, lag_best = s, lag
    return best, lag_best


def test_repetition_score_flags_a_looped_world_clip_and_passes_an_unlooped_one():
    # seed 47 moves right and never comes back within 8 px over 32 frames
    frames, train, period = 32, 16, 9
    plain = world_clip(47, frames=frames, size=32)
    looped_video = world_clip(47, frames=period, size=32).video.repeat(4, 1, 1, 1)[:frames]
    for video, flagged in ((looped_video, True), (plain.video, False)):
        score = repetition_score(video, train)
        want, lag = _hand_repetition(((video.permute(0, 2, 3, 1).numpy() + 1) / 2), train)
        assert float(score) == pytest.approx(want, abs=1e-9)
        if not flagged:  # (the loop's lags 18 and 27 tie at 1 up to rounding)
            assert int(score[D.OFFSET]) == lag
        assert (float(score) >= REPETITION_FLAG) is flagged
    looped = repetition_score(looped_video, train)
    assert float(looped) == pytest.approx(1.0, abs=1e-9)
    assert int(looped[D.OFFSET]) % period == 0
    assert float(repetition_score(plain.video, train)) < 0.5
    curve = lag_similarity(looped_video)
    assert float(curve.sel(offset=9)) == pytest.approx(1.0, abs=1e-9)


def test_repetition_score_needs_a_video_longer_than_the_training_length():
    video = world_clip(0, frames=8, size=16).video
    with pytest.raises(ValueError, match="longer than train_frames=8"):
        repetition_score(video, 8)
    with pytest.raises(ValueError, match="train_frames must be an integer >= 1"):
        repetition_score(video, 0)
