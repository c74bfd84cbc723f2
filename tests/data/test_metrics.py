"""Golden tests for attnlab.data.metrics: hand-derived values and loop-based numpy references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from attnlab.core.dims import FRAME, FRAME2, HEAD, KEY, LAYER, OFFSET, QUERY
from attnlab.data import metrics as M

N = 6


def _maps(arr: np.ndarray) -> xr.DataArray:
    return xr.DataArray(arr, dims=(QUERY, KEY))


def _identity(n: int = N) -> xr.DataArray:
    return _maps(np.eye(n))


def _uniform(n: int = N) -> xr.DataArray:
    return _maps(np.full((n, n), 1.0 / n))


def _gauss_rows(n: int = N, sigma: float = 1.5) -> np.ndarray:
    g = M.gaussian_prior(n, sigma)
    return g / g.sum(1, keepdims=True)


# ---------------------------------------------------------------- loop references


def _ref_diagonalness(w: np.ndarray) -> float:
    pairs = [(i, j, w[i, j]) for i in range(w.shape[0]) for j in range(w.shape[1])]
    tot = sum(p[2] for p in pairs)
    mi = sum(i * x for i, _, x in pairs) / tot
    mj = sum(j * x for _, j, x in pairs) / tot
    cov = sum(x * (i - mi) * (j - mj) for i, j, x in pairs) / tot
    vi = sum(x * (i - mi) ** 2 for i, _, x in pairs) / tot
    vj = sum(x * (j - mj) ** 2 for _, j, x in pairs) / tot
    return cov / math.sqrt(vi * vj)


def _ref_entropy(p: np.ndarray) -> list[float]:
    return [-sum(x * math.log(x) for x in row if x > 0) / math.log(len(row)) for row in p]


def _ref_band(p: np.ndarray, k: int) -> float:
    n = len(p)
    return sum(sum(p[i, j] for j in range(n) if abs(i - j) <= k) for i in range(n)) / n


# ---------------------------------------------------------------- gaussian_prior


def test_gaussian_prior_matches_eq2():
    n, sigma = 7, 1.7
    g = M.gaussian_prior(n, sigma)
    assert g.shape == (n, n) and g.dtype == np.float64
    for i in range(1, n + 1):  # the paper indexes frames from 1
        for j in range(1, n + 1):
            assert g[i - 1, j - 1] == pytest.approx(math.exp(-0.5 * ((j - i) / sigma) ** 2))
    np.testing.assert_array_equal(np.diag(g), 1.0)
    np.testing.assert_array_equal(g, g.T)
    # Toeplitz: constant along every diagonal
    for d in range(n):
        assert np.ptp(np.diagonal(g, d)) == 0.0
    assert M.gaussian_prior(1, 0.5).tolist() == [[1.0]]


@pytest.mark.parametrize("sigma", [0, -1.0, float("nan"), float("inf"), "a"])
def test_gaussian_prior_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        M.gaussian_prior(4, sigma)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_gaussian_prior_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n "):
        M.gaussian_prior(n, 1.0)


# ---------------------------------------------------------------- diagonalness


def test_diagonalness_golden():
    assert float(M.diagonalness(_identity())) == pytest.approx(1.0)
    assert float(M.diagonalness(_uniform())) == pytest.approx(0.0, abs=1e-12)
    # anti-diagonal: j = N-1-i, perfectly anti-correlated
    assert float(M.diagonalness(_maps(np.eye(N)[::-1]))) == pytest.approx(-1.0)
    # N = 2, [[a, b], [b, a]]: r = (a - b) / (a + b); the Gaussian band gives tanh(1/(4 s^2))
    sigma = 0.8
    assert float(M.diagonalness(_maps(M.gaussian_prior(2, sigma)))) == pytest.approx(
        math.tanh(1 / (4 * sigma**2))
    )


def test_diagonalness_gaussian_band_matches_loop_reference_and_orders_by_sigma():
    scores = []
    for sigma in (0.5, 1.0, 2.0, 4.0):
        g = _gauss_rows(8, sigma)
        s = float(M.diagonalness(_maps(g)))
        assert s == pytest.approx(_ref_diagonalness(g), rel=1e-12)
        scores.append(s)
    assert all(a > b for a, b in itertools.pairwise(scores))  # wider band, less diagonal
    assert 0.0 < scores[-1] < scores[0] < 1.0


def test_diagonalness_asymmetric_maps_match_loop_reference():
    # causal: every frame attends to the previous one (frame 0 to itself)
    prev = np.zeros((N, N))
    prev[0, 0] = 1.0
    prev[np.arange(1, N), np.arange(N - 1)] = 1.0
    rng = np.random.default_rng(2)
    skewed = rng.random((N, N)) ** 3 * np.triu(np.ones((N, N)))
    for w in (prev, skewed, prev + 0.3 * skewed.T):
        assert float(M.diagonalness(_maps(w))) == pytest.approx(_ref_diagonalness(w), rel=1e-12)


def test_diagonalness_is_scale_free_and_zero_when_undefined():
    g = _gauss_rows()
    assert float(M.diagonalness(_maps(5.0 * g))) == pytest.approx(float(M.diagonalness(_maps(g))))
    one_column = np.zeros((N, N))
    one_column[:, 0] = 1.0  # every query attends to frame 0: var_j = 0
    assert float(M.diagonalness(_maps(one_column))) == 0.0
    assert float(M.diagonalness(_maps(np.ones((1, 1))))) == 0.0


def test_negative_entries_are_rejected():
    with pytest.raises(ValueError, match="minmax_normalise"):
        M.diagonalness(_maps(np.eye(3) - 0.5))
    with pytest.raises(ValueError, match="non-negative"):
        M.row_entropy(_maps(np.eye(3) - 0.5))


# ---------------------------------------------------------------- band metrics


def test_band_profile_golden():
    prof = M.band_profile(_identity())
    assert prof.dims == (OFFSET,)
    assert prof[OFFSET].values.tolist() == list(range(N))
    np.testing.assert_allclose(prof.values, [1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(M.band_profile(_uniform()).values, np.full(N, 1 / N))
    # a symmetric Toeplitz matrix returns its generator: exp(-d^2 / (2 sigma^2))
    sigma = 1.3
    d = np.arange(N)
    np.testing.assert_allclose(
        M.band_profile(_maps(M.gaussian_prior(N, sigma))).values, np.exp(-0.5 * (d / sigma) ** 2)
    )


def test_band_profile_averages_both_off_diagonals():
    a = np.arange(9, dtype=float).reshape(3, 3)
    # offset 1: entries (0,1)=1, (1,2)=5, (1,0)=3, (2,1)=7 -> 4; offset 2: (0,2)=2, (2,0)=6 -> 4
    np.testing.assert_allclose(M.band_profile(_maps(a)).values, [(0 + 4 + 8) / 3, 4.0, 4.0])


@pytest.mark.parametrize("n", [2, 5, 16])
def test_band_concentration_golden(n):
    for k in (0, 1, 3):
        assert float(M.band_concentration(_identity(n), k)) == pytest.approx(1.0)
    assert float(M.band_concentration(_uniform(n), 1)) == pytest.approx((3 * n - 2) / n**2)
    for k in range(n):
        expected = (n * (2 * k + 1) - k * (k + 1)) / n**2
        assert float(M.band_concentration(_uniform(n), k)) == pytest.approx(expected)
    assert float(M.band_concentration(_uniform(n), n + 3)) == pytest.approx(1.0)


def test_band_concentration_hand_example_and_gaussian_reference():
    tri = np.array([[0.5, 0.5, 0], [0.25, 0.5, 0.25], [0, 0.5, 0.5]])
    assert float(M.band_concentration(_maps(tri), 0)) == pytest.approx(0.5)
    assert float(M.band_concentration(_maps(tri), 1)) == pytest.approx(1.0)
    g = _gauss_rows(9, 1.2)
    for k in (0, 1, 2):
        assert float(M.band_concentration(_maps(g), k)) == pytest.approx(_ref_band(g, k))
    # rows are read as fractions: scaling a row changes nothing
    scaled = g * np.arange(1, 10)[:, None]
    assert float(M.band_concentration(_maps(scaled), 1)) == pytest.approx(_ref_band(g, 1))
    with pytest.raises(ValueError, match="k must"):
        M.band_concentration(_maps(g), -1)


# ---------------------------------------------------------------- entropy


def test_row_entropy_golden():
    h_id = M.row_entropy(_identity())
    assert h_id.dims == (QUERY,)
    np.testing.assert_array_equal(h_id.values, 0.0)
    np.testing.assert_allclose(M.row_entropy(_uniform()).values, 1.0)
    np.testing.assert_allclose(M.row_entropy(_uniform(), normalise=False).values, math.log(N))
    tri = np.array([[0.5, 0.5, 0], [0.25, 0.5, 0.25], [0, 0.5, 0.5]])
    ln2 = math.log(2)
    np.testing.assert_allclose(
        M.row_entropy(_maps(tri), normalise=False).values, [ln2, 1.5 * ln2, ln2]
    )
    g = _gauss_rows(7, 0.9)
    np.testing.assert_allclose(M.row_entropy(_maps(g)).values, _ref_entropy(g))
    assert M.row_entropy(_maps(np.ones((1, 1)))).values.tolist() == [0.0]


# ---------------------------------------------------------------- broadcasting, dims


def _stack() -> xr.DataArray:
    """(layer=3, head=2, query, key): identity, uniform, Gaussian rows on the layers."""
    base = np.stack([np.eye(N), np.full((N, N), 1 / N), _gauss_rows()])
    arr = np.stack([base, base[:, ::-1, ::-1]], axis=1)  # head 1: flipped in time
    return xr.DataArray(
        arr,
        dims=(LAYER, HEAD, QUERY, KEY),
        coords={LAYER: ["a", "b", "c"], HEAD: [0, 1], QUERY: np.arange(N), KEY: np.arange(N)},
    )


@pytest.mark.parametrize(
    ("fn", "extra"),
    [
        (M.diagonalness, ()),
        (M.band_profile, (OFFSET,)),
        (lambda m: M.band_concentration(m, 1), ()),
        (M.row_entropy, (QUERY,)),
        (M.minmax_normalise, (QUERY, KEY)),
    ],
)
def test_metrics_broadcast_over_extra_dims(fn, extra):
    maps = _stack()
    out = fn(maps)
    assert out.dims == (LAYER, HEAD, *extra)
    assert out[LAYER].values.tolist() == ["a", "b", "c"]
    assert np.isfinite(out.values).all()
    for layer in range(3):
        for head in range(2):
            single = fn(maps.isel({LAYER: layer, HEAD: head}))
            np.testing.assert_allclose(out.isel({LAYER: layer, HEAD: head}).values, single.values)
    # dims are found by name: another axis order gives the same numbers
    swapped = fn(maps.transpose(KEY, HEAD, QUERY, LAYER))
    np.testing.assert_allclose(swapped.transpose(*out.dims).values, out.values)


_ON_MAPS = {
    "diagonalness": M.diagonalness,
    "band_profile": M.band_profile,
    "band_concentration": lambda m: M.band_concentration(m, 1),
    "row_entropy": M.row_entropy,
    "sink_score": M.sink_score,
    "mass_beyond": lambda m: M.dispersion(m, 1)["mass_beyond"],
    "entropy_of_dispersion": lambda m: M.dispersion(m, 1)["entropy"],
    "band_spectrum": M.band_spectrum,
    "echo_period": M.echo_period,
    "echo_power": lambda m: M.echo_period(m).echo_power,
    "l1_to_uniform": lambda m: M.map_distance(m, _uniform(m.sizes[QUERY])),
    "js_to_uniform": lambda m: M.map_distance(m, _uniform(m.sizes[QUERY]), "js"),
    "fro_to_uniform": lambda m: M.map_distance(m, _uniform(m.sizes[QUERY]), "fro"),
}


@pytest.mark.parametrize("name", list(_ON_MAPS))
def test_a_gap_or_a_padded_map_scores_nan_and_the_others_are_untouched(name):
    """A gap (all NaN, ``ran`` False) and a 4-frame map padded with NaN to 6 frames beside
    whole maps: NaN for those two, never a number from the entries that are there; the whole
    maps score as alone."""
    fn = _ON_MAPS[name]
    gap = np.full((N, N), np.nan)
    padded = np.full((N, N), np.nan)
    padded[:4, :4] = _gauss_rows(4)
    whole = [_gauss_rows(N, 1.0), _gauss_rows(N, 2.5)]
    maps = xr.DataArray(np.stack([whole[0], gap, padded, whole[1]]), dims=(LAYER, QUERY, KEY))
    out = fn(maps)
    for i in (1, 2):
        assert np.isnan(out.isel({LAYER: i}).values).all()
    for i, w in ((0, whole[0]), (3, whole[1])):
        np.testing.assert_allclose(out.isel({LAYER: i}).values, fn(_maps(w)).values)
        assert np.isfinite(out.isel({LAYER: i}).values).all()


def test_minmax_keeps_nan_where_the_map_has_none_and_scales_a_padded_map_by_its_frames():
    padded = np.full((N, N), np.nan)
    padded[:4, :4] = _gauss_rows(4)
    gap = np.full((N, N), np.nan)
    out = M.minmax_normalise(xr.DataArray(np.stack([padded, gap]), dims=(LAYER, QUERY, KEY)))
    np.testing.assert_allclose(out.values[0, :4, :4], M.minmax_normalise(_gauss_rows(4)).values)
    assert np.isnan(out.values[0, 4:]).all() and np.isnan(out.values[0, :, 4:]).all()
    assert np.isnan(out.values[1]).all()


def test_golden_values_in_a_stack():
    d = M.diagonalness(_stack())
    np.testing.assert_allclose(d.sel(head=0).values[:2], [1.0, 0.0], atol=1e-12)
    # time reversal keeps the diagonal structure
    np.testing.assert_allclose(d.sel(head=1).values, d.sel(head=0).values)


def test_similarity_dims_and_numpy_input():
    sim = xr.DataArray(M.gaussian_prior(5, 1.0), dims=(FRAME, FRAME2))
    expected = float(M.diagonalness(_maps(M.gaussian_prior(5, 1.0))))
    assert float(M.diagonalness(sim, row_dim=FRAME, col_dim=FRAME2)) == pytest.approx(expected)
    assert float(M.diagonalness(M.gaussian_prior(5, 1.0))) == pytest.approx(expected)
    with pytest.raises(ValueError, match="row_dim"):
        M.diagonalness(sim)  # default dims query_frame/key_frame are absent


def test_non_square_maps_are_rejected():
    with pytest.raises(ValueError, match="square"):
        M.band_profile(_maps(np.ones((3, 4))))


# ---------------------------------------------------------------- minmax


def test_minmax_normalise():
    maps = _stack() * 3.0 + 1.0
    out = M.minmax_normalise(maps)
    np.testing.assert_allclose(out.min([QUERY, KEY]).values, 0.0)
    np.testing.assert_allclose(out.max([QUERY, KEY]).sel(layer=["a", "c"]).values, 1.0)
    # the uniform layer is constant: 0, not NaN
    np.testing.assert_array_equal(out.sel(layer="b").values, 0.0)
    shared = M.minmax_normalise(maps, shared_dims=(LAYER,))
    lo, hi = float(maps.sel(head=0).min()), float(maps.sel(head=0).max())
    np.testing.assert_allclose(
        shared.sel(head=0).values, (maps.sel(head=0).values - lo) / (hi - lo)
    )
    with pytest.raises(ValueError, match="shared_dims"):
        M.minmax_normalise(maps, shared_dims=("run",))


# ---------------------------------------------------------------- resampling, distances


def test_resample_maps_is_bilinear_with_aligned_corners():
    rng = np.random.default_rng(0)
    a = rng.random((9, 9))
    out = M.resample_maps(_maps(a), 5)
    grid = np.arange(9.0)
    pos = np.linspace(0, 8, 5)
    interp = RegularGridInterpolator((grid, grid), a, method="linear")
    expected = interp(np.stack(np.meshgrid(pos, pos, indexing="ij"), -1))
    np.testing.assert_allclose(out.values, expected, atol=1e-12)
    assert out[QUERY].values.tolist() == list(range(5))
    np.testing.assert_allclose(M.resample_maps(_maps(a), 9).values, a, atol=1e-12)
    up = M.resample_maps(_maps(a), 17)  # upsampling hits every source point exactly
    np.testing.assert_allclose(up.values[::2, ::2], a, atol=1e-12)


def test_map_distance_golden():
    ident, unif = _identity(), _uniform()
    for kind in ("l1", "js", "fro"):
        assert float(M.map_distance(ident, ident, kind)) == pytest.approx(0.0, abs=1e-12)
    assert float(M.map_distance(ident, unif, "l1")) == pytest.approx(2 * (N - 1) / N)
    assert float(M.map_distance(ident, unif, "fro")) == pytest.approx(math.sqrt(N - 1))
    # per row: JS(delta, uniform) in bits, derived by hand
    js = 0.5 * math.log2(2 * N / (N + 1)) + 0.5 * (math.log2(2 / (N + 1)) / N + (N - 1) / N)
    assert float(M.map_distance(ident, unif, "js")) == pytest.approx(js)
    shifted = _maps(np.roll(np.eye(N), 1, axis=1))  # disjoint support in every row
    assert float(M.map_distance(ident, shifted, "js")) == pytest.approx(1.0)
    assert float(M.map_distance(ident, shifted, "l1")) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="kind"):
        M.map_distance(ident, unif, "kl")


def test_map_distance_broadcasts_and_resamples():
    stack = _stack()
    d = M.map_distance(stack, _identity(), "l1")
    assert d.dims == (LAYER, HEAD)
    assert float(d.sel(layer="a", head=0)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="resample=True"):
        M.map_distance(_uniform(16), _uniform(8))
    # a resampled row-stochastic map is renormalised: uniform 16 == uniform 8
    for kind in ("l1", "js", "fro"):
        assert float(M.map_distance(_uniform(16), _uniform(8), kind, resample=True)) == (
            pytest.approx(0.0, abs=1e-12)
        )
    # similarity-like maps (rows not summing to 1) are interpolated, not renormalised
    big = M.gaussian_prior(9, 2.0)
    small = M.resample_maps(_maps(big), 5).values
    assert float(M.map_distance(_maps(big), _maps(small), "fro", resample=True)) == pytest.approx(
        0.0, abs=1e-12
    )
