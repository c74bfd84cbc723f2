"""Metrics on temporal attention maps and inter-frame similarity matrices.

Every function works on an :class:`xarray.DataArray` whose matrix axes are named
(``row_dim`` x ``col_dim``; by default ``query_frame`` x ``key_frame``, rows are query
frames). Any other dimension (run, step, layer, cfg, sample, head, ...) broadcasts through,
so one call scores a whole recording. Similarity matrices (``frame`` x ``frame2``) are
scored by passing ``row_dim=FRAME, col_dim=FRAME2``. A plain numpy array is accepted too:
its last two axes are taken as rows and columns.

Matrix entries are read by position (0..N-1), never by coordinate label. Reductions run
in float64.

A map with a NaN entry scores NaN (a gap: ``ran`` False; or the padding of a run shorter than
the others of one Dataset: score such runs each on its own frames, e.g.
``probs.isel(query_frame=slice(0, n), key_frame=slice(0, n))``); never a number from the
entries that are there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import xarray as xr

from attnlab.core.dims import KEY, OFFSET, QUERY

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

# row sums within this tolerance of 1 mark a map as row-stochastic (attention probabilities)
_STOCHASTIC_ATOL = 1e-3


def gaussian_prior(n: int, sigma: float) -> np.ndarray:
    """The TAR regularisation matrix of the paper's Eq. (2), shape ``(n, n)``, float64.

    ``dA[i, j] = exp(-0.5 * ((j - i) / sigma) ** 2)``: a symmetric Toeplitz matrix with ones
    on the diagonal that decays with the frame offset. Smaller ``sigma`` = stronger
    regularisation (more dynamic video). This is the single definition used by the TAR edit.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n (number of frames) must be an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n (number of frames) must be >= 1, got {n}")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}") from None
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    idx = np.arange(n, dtype=np.float64)
    offset = idx[None, :] - idx[:, None]
    return np.exp(-0.5 * (offset / sigma) ** 2)


# ---------------------------------------------------------------------------- helpers


def _as_maps(maps: xr.DataArray | np.ndarray, row_dim: str, col_dim: str) -> xr.DataArray:
    """Validate the matrix dims; wrap a numpy array (last two axes = rows, columns)."""
    if not isinstance(maps, xr.DataArray):
        arr = np.asarray(maps)
        if arr.ndim < 2:
            raise ValueError(f"expected at least a 2-D matrix, got shape {arr.shape}")
        lead = [f"dim_{k}" for k in range(arr.ndim - 2)]
        maps = xr.DataArray(arr, dims=[*lead, row_dim, col_dim])
    missing = [d for d in (row_dim, col_dim) if d not in maps.dims]
    if missing:
        raise ValueError(
            f"maps lack the matrix dimension(s) {missing}; they have {list(maps.dims)}. "
            "Pass row_dim=/col_dim= (e.g. row_dim='frame', col_dim='frame2' for similarity)."
        )
    if row_dim == col_dim:
        raise ValueError("row_dim and col_dim must differ")
    return maps.astype(np.float64)


def _square(maps: xr.DataArray, row_dim: str, col_dim: str) -> int:
    n, m = maps.sizes[row_dim], maps.sizes[col_dim]
    if n != m:
        raise ValueError(f"expected square {row_dim} x {col_dim} maps, got {n} x {m}")
    return n


def _index(n: int, dim: str) -> xr.DataArray:
    return xr.DataArray(np.arange(n, dtype=np.float64), dims=[dim])


def _abs_offset(n: int, row_dim: str, col_dim: str) -> xr.DataArray:
    return abs(_index(n, row_dim) - _index(n, col_dim))


def _check_nonnegative(maps: xr.DataArray, what: str) -> None:
    if bool((maps < 0).any()):
        raise ValueError(
            f"{what} needs non-negative entries (probabilities or similarities >= 0); "
            "apply minmax_normalise() first to logits or signed similarities"
        )


def _row_normalised(maps: xr.DataArray, col_dim: str) -> xr.DataArray:
    """Rows divided by their sum (no-op for attention probabilities); all-zero rows stay 0, a
    row with a NaN entry is NaN."""
    total = maps.sum(col_dim, skipna=False)
    return xr.where(total > 0, maps / total.where(total > 0, 1.0), 0.0).where(total.notnull())


def _is_row_stochastic(maps: xr.DataArray, col_dim: str) -> bool:
    """Every row without NaN sums to 1 (gaps do not decide it)."""
    sums = np.asarray(maps.sum(col_dim, skipna=False).values).ravel()
    sums = sums[np.isfinite(sums)]
    return bool(sums.size) and bool(np.allclose(sums, 1.0, atol=_STOCHASTIC_ATOL))


def _whole(maps: xr.DataArray, row_dim: str, col_dim: str) -> xr.DataArray:
    """True for each map without a NaN entry (the others score NaN)."""
    return maps.notnull().all([row_dim, col_dim])


# ---------------------------------------------------------------------------- metrics


def diagonalness(
    maps: xr.DataArray | np.ndarray, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.DataArray:
    """Correlation-based diagonal score in [-1, 1]: 1 for a pure diagonal, 0 for uniform.

    The entries ``w_ij >= 0`` are read as weights of the index pairs ``(i, j)``; the score is
    the weighted Pearson correlation between row index ``i`` and column index ``j``::

        W      = sum_ij w_ij
        mu_i   = sum_ij w_ij i / W                 mu_j = sum_ij w_ij j / W
        cov    = sum_ij w_ij (i - mu_i)(j - mu_j) / W
        var_i  = sum_ij w_ij (i - mu_i)^2 / W      var_j = sum_ij w_ij (j - mu_j)^2 / W
        score  = cov / sqrt(var_i * var_j)

    Mass concentrated near the diagonal makes ``j`` follow ``i`` (score near 1); attention
    spread over all frames decouples them (score near 0). The scale of ``w`` cancels, so
    maps need not be normalised. Where a marginal has zero variance (N = 1, or all mass in
    one row or one column) the correlation is undefined and the score is 0.
    """
    maps = _as_maps(maps, row_dim, col_dim)
    _check_nonnegative(maps, "diagonalness")
    i = _index(maps.sizes[row_dim], row_dim)
    j = _index(maps.sizes[col_dim], col_dim)
    dims = [row_dim, col_dim]

    # weighted raw moments by contraction: no temporaries of the maps' full size
    def moment(weights: xr.DataArray) -> xr.DataArray:
        return xr.dot(maps, weights, dim=dims)

    ones = xr.ones_like(i) * xr.ones_like(j)
    total = moment(ones)
    safe_total = total.where(total > 0, 1.0)
    mu_i = moment(i * ones) / safe_total
    mu_j = moment(j * ones) / safe_total
    cov = moment(i * j) / safe_total - mu_i * mu_j
    var_i = moment(i**2 * ones) / safe_total - mu_i**2
    var_j = moment(j**2 * ones) / safe_total - mu_j**2
    denom = np.sqrt((var_i * var_j).clip(min=0.0))
    # variances below float noise count as zero (e.g. all mass in one column)
    defined = denom > 1e-9
    score = xr.where(defined, cov / denom.where(defined, 1.0), 0.0)
    return score.clip(-1.0, 1.0).where(_whole(maps, row_dim, col_dim)).rename("diagonalness")


def band_profile(
    maps: xr.DataArray | np.ndarray, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.DataArray:
    """Mean entry at each frame offset ``d = |i - j|``: new dim ``offset`` with coords 0..N-1.

    Averages the ``N`` diagonal entries for ``d = 0`` and the ``2 (N - d)`` entries of both
    off-diagonals for ``d > 0``: how fast attention (or similarity) decays with distance in
    time. For a symmetric Toeplitz matrix it returns the generating sequence.
    """
    maps = _as_maps(maps, row_dim, col_dim)
    n = _square(maps, row_dim, col_dim)
    offset = _abs_offset(n, row_dim, col_dim)
    d = xr.DataArray(np.arange(n, dtype=np.float64), dims=[OFFSET], coords={OFFSET: np.arange(n)})
    mask = (offset == d).astype(np.float64)  # (offset, row, col) one-hot
    sums = xr.dot(maps, mask, dim=[row_dim, col_dim])
    return (sums / mask.sum([row_dim, col_dim])).rename("band_profile")


def band_concentration(
    maps: xr.DataArray | np.ndarray, k: int = 1, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.DataArray:
    """Mean over rows of the fraction of each row's mass within the band ``|i - j| <= k``.

    For attention probabilities (rows sum to 1) this is the attention mass on the ``k``
    nearest frames on either side; rows are divided by their sum so that similarity matrices
    read the same way. Identity gives 1; uniform gives ``(N (2k+1) - k (k+1)) / N^2`` for
    ``k < N`` (``(3N - 2) / N^2`` for ``k = 1``), and 1 for ``k >= N - 1``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    maps = _as_maps(maps, row_dim, col_dim)
    n = _square(maps, row_dim, col_dim)
    _check_nonnegative(maps, "band_concentration")
    inside = (_abs_offset(n, row_dim, col_dim) <= k).astype(np.float64)
    rows = _row_normalised(maps, col_dim)
    inner = (rows * inside).sum(col_dim, skipna=False).mean(row_dim, skipna=False)
    return inner.rename("band_concentration")


def row_entropy(
    maps: xr.DataArray | np.ndarray,
    normalise: bool = True,
    row_dim: str = QUERY,
    col_dim: str = KEY,
) -> xr.DataArray:
    """Shannon entropy (nats) of each row; the result keeps ``row_dim``, drops ``col_dim``.

    ``H_i = -sum_j p_ij log p_ij`` with ``0 log 0 = 0``, after dividing each row by its sum
    (a no-op for attention probabilities). ``normalise=True`` divides by ``log N`` so that 0
    means attending to one frame and 1 means attending uniformly (N = 1 gives 0).
    """
    maps = _as_maps(maps, row_dim, col_dim)
    _check_nonnegative(maps, "row_entropy")
    p = _row_normalised(maps, col_dim)
    plogp = xr.where(p > 0, p * np.log(p.where(p > 0, 1.0)), 0.0)
    h = (-plogp.sum(col_dim)).where(p.notnull().all(col_dim))  # a row with NaN: NaN
    if normalise:
        n = maps.sizes[col_dim]
        h = h / np.log(n) if n > 1 else h * 0.0
    return h.rename("row_entropy")


def minmax_normalise(
    maps: xr.DataArray | np.ndarray,
    row_dim: str = QUERY,
    col_dim: str = KEY,
    *,
    shared_dims: Sequence[str] = (),
) -> xr.DataArray:
    """Scale each map to [0, 1] by its own min and max, as the paper draws its heat maps.

    ``shared_dims`` adds dimensions over which one common min/max is taken, e.g.
    ``shared_dims=("run",)`` to normalise synthetic and real maps together as in Fig. S.1.
    Constant maps become 0; NaN entries stay NaN and take no part in the min and max (a
    run padded to a longer one is scaled by its own frames).
    """
    maps = _as_maps(maps, row_dim, col_dim)
    missing = [d for d in shared_dims if d not in maps.dims]
    if missing:
        raise ValueError(f"shared_dims {missing} not in maps dims {list(maps.dims)}")
    over = [row_dim, col_dim, *shared_dims]
    lo, hi = maps.min(over), maps.max(over)
    span = hi - lo
    out = xr.where(span > 0, (maps - lo) / span.where(span > 0, 1.0), 0.0).where(maps.notnull())
    return out.transpose(*maps.dims).assign_attrs(maps.attrs)


def _interp_weights(n_src: int, n: int) -> np.ndarray:
    """``(n, n_src)`` linear-interpolation matrix, corners aligned (first/last frames match)."""
    if n == 1:
        pos = np.array([(n_src - 1) / 2.0])
    else:
        pos = np.arange(n) * (n_src - 1) / (n - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_src - 1)
    hi = np.minimum(lo + 1, n_src - 1)
    frac = pos - lo
    w = np.zeros((n, n_src))
    np.add.at(w, (np.arange(n), lo), 1.0 - frac)
    np.add.at(w, (np.arange(n), hi), frac)
    return w


def resample_maps(
    maps: xr.DataArray | np.ndarray, n: int, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.DataArray:
    """Bilinearly resample square ``N x N`` maps to ``n x n`` (extra dims broadcast).

    Output entry ``(s, t)`` is the bilinear interpolation of the input at the fractional
    positions ``p(s), p(t)`` with ``p(s) = s (N - 1) / (n - 1)`` (corners aligned: the first
    and last frames map onto each other). Computed as ``R M R^T`` with the same ``(n, N)``
    interpolation matrix ``R`` on both axes, so symmetric maps stay symmetric. Values are
    interpolated, not renormalised.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    maps = _as_maps(maps, row_dim, col_dim)
    n_src = _square(maps, row_dim, col_dim)
    w = _interp_weights(n_src, int(n))
    tmp_r, tmp_c = f"__{row_dim}_new", f"__{col_dim}_new"
    r_rows = xr.DataArray(w, dims=[tmp_r, row_dim])
    r_cols = xr.DataArray(w, dims=[tmp_c, col_dim])
    out = xr.dot(r_rows, maps.drop_vars([row_dim, col_dim], errors="ignore"), dim=row_dim)
    out = xr.dot(out, r_cols, dim=col_dim)
    out = out.rename({tmp_r: row_dim, tmp_c: col_dim})
    out = out.assign_coords({row_dim: np.arange(n), col_dim: np.arange(n)})
    return out.transpose(*maps.dims)


def map_distance(
    a: xr.DataArray | np.ndarray,
    b: xr.DataArray | np.ndarray,
    kind: Literal["l1", "js", "fro"] = "l1",
    *,
    resample: bool = False,
    row_dim: str = QUERY,
    col_dim: str = KEY,
) -> xr.DataArray:
    """Distance between two sets of maps (e.g. synthetic vs real); extra dims broadcast.

    - ``"l1"``: mean over rows of ``sum_j |a_ij - b_ij|`` (in [0, 2] for probability rows).
    - ``"js"``: mean over rows of the Jensen-Shannon divergence in bits (in [0, 1]); rows are
      first divided by their sums.
    - ``"fro"``: Frobenius norm ``sqrt(sum_ij (a_ij - b_ij)^2)``.

    Maps with different N are an error unless ``resample=True``: then the larger set is
    resampled to the smaller N with :func:`resample_maps` (bilinear, corners aligned), and if
    it was row-stochastic (rows sum to 1) its rows are renormalised to sum to 1 again.
    """
    a = _as_maps(a, row_dim, col_dim)
    b = _as_maps(b, row_dim, col_dim)
    na, nb = _square(a, row_dim, col_dim), _square(b, row_dim, col_dim)
    if na != nb:
        if not resample:
            raise ValueError(
                f"maps have different frame counts ({na} vs {nb}); pass resample=True to "
                "bilinearly resample both to the smaller one"
            )
        n = min(na, nb)

        def _to(m: xr.DataArray, size: int) -> xr.DataArray:
            if m.sizes[row_dim] == size:
                return m
            stochastic = _is_row_stochastic(m, col_dim)
            m = resample_maps(m, size, row_dim, col_dim)
            return _row_normalised(m, col_dim) if stochastic else m

        a, b = _to(a, n), _to(b, n)
    # compare by position: drop matrix coords so differing labels do not misalign
    a = a.drop_vars([row_dim, col_dim], errors="ignore")
    b = b.drop_vars([row_dim, col_dim], errors="ignore")
    if kind == "l1":
        out = abs(a - b).sum(col_dim, skipna=False).mean(row_dim, skipna=False)
    elif kind == "fro":
        out = np.sqrt(((a - b) ** 2).sum([row_dim, col_dim], skipna=False))
    elif kind == "js":
        _check_nonnegative(a, "map_distance(kind='js')")
        _check_nonnegative(b, "map_distance(kind='js')")
        p, q = _row_normalised(a, col_dim), _row_normalised(b, col_dim)
        m = 0.5 * (p + q)

        def _kl(x: xr.DataArray) -> xr.DataArray:
            ratio = (x / m.where(m > 0, 1.0)).where(x > 0, 1.0)
            return xr.where(x > 0, x * np.log2(ratio), 0.0).sum(col_dim)

        out = (0.5 * _kl(p) + 0.5 * _kl(q)).mean(row_dim)
        out = out.where(_whole(a, row_dim, col_dim) & _whole(b, row_dim, col_dim))
    else:
        raise ValueError(f"kind must be 'l1', 'js' or 'fro', got {kind!r}")
    return out.rename(f"map_distance_{kind}")


# ---------------------------------------------------------------------------- length extrapolation

#: the dimension of :func:`band_spectrum` (candidate periods in frames); a metric's output
#: dimension, not one of the store's
PERIOD = "period"
#: :func:`repetition_score` at or above this flags a clip as repeating. Calibrated on the
#: procedural world (:func:`attnlab.data.world.world_clip`, seeds 0..59 at 24, 32 and 48 frames,
#: lags >= 16): clips looped with a period P score 1 (to float rounding); clips whose object
#: comes back within 0.6 px of an earlier state (the world's wall bounces are periodic) score
#: >= 0.98; clips whose object never comes back within 2 px score <= 0.85
REPETITION_FLAG = 0.9
_DETREND = ("monotone", "linear", "mean", "none")


def _frame_count(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def dispersion(
    maps: xr.DataArray | np.ndarray, window: int, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.Dataset:
    """How far attention spreads past a training window of ``window`` frames.

    Two variables, each a mean over query rows (other dims broadcast):

    - ``mass_beyond``: the attention mass on key frames farther than the window,
      ``mean_i sum_{j : |i - j| > window} p_ij`` (rows divided by their sum first, a no-op for
      attention probabilities). 0 when every row stays within the window; a uniform map gives
      ``(N - W - 1)(N - W) / N^2`` (``W = window < N``), kept in ``attrs["uniform_mass_beyond"]``.
    - ``entropy``: the row entropy over ``log N`` (:func:`row_entropy`), 0 for one frame, 1 for
      uniform attention.

    ``window`` is in the maps' frames (latent frames for recorded maps): UltraViCo's
    "training window" is the training length; pass what the model was trained on.
    """
    window = _frame_count("window", window, 0)
    maps = _as_maps(maps, row_dim, col_dim)
    n = _square(maps, row_dim, col_dim)
    _check_nonnegative(maps, "dispersion")
    beyond = (_abs_offset(n, row_dim, col_dim) > window).astype(np.float64)
    rows = _row_normalised(maps, col_dim)
    mass = (rows * beyond).sum(col_dim, skipna=False).mean(row_dim, skipna=False)
    entropy = row_entropy(maps, True, row_dim, col_dim).mean(row_dim, skipna=False)
    w = min(window, n - 1)
    uniform = (n - w - 1) * (n - w) / n**2
    return xr.Dataset(
        {"mass_beyond": mass.rename("mass_beyond"), "entropy": entropy.rename("entropy")},
        attrs={"window": window, "uniform_mass_beyond": uniform},
    )


def _nonincreasing_fit(y: np.ndarray) -> np.ndarray:
    """The least-squares non-increasing sequence closest to ``y [M]`` (pool adjacent
    violators): the decay of a band profile without its bumps."""
    values: list[float] = []
    weights: list[int] = []
    for v in y.tolist():
        values.append(v)
        weights.append(1)
        while len(values) > 1 and values[-2] < values[-1]:
            w = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            values[-2:] = [merged]
            weights[-2:] = [w]
    return np.repeat(values, weights)


def _detrended(x: np.ndarray, d: np.ndarray, detrend: str) -> np.ndarray:
    """``x [..., M]`` minus its non-increasing fit ("monotone"), its least-squares line in ``d``
    ("linear") or its mean ("mean")."""
    if detrend == "none":
        return x
    if detrend == "monotone":
        flat = x.reshape(-1, x.shape[-1])
        out = np.empty_like(flat)
        for r, row in enumerate(flat):
            out[r] = row - _nonincreasing_fit(row) if np.isfinite(row).all() else np.nan
        return out.reshape(x.shape)
    if detrend == "mean":
        return x - x.mean(-1, keepdims=True)
    basis = np.stack([np.ones_like(d), d], 1)  # [M, 2]
    hat = basis @ np.linalg.pinv(basis)  # projection onto the line, [M, M], symmetric
    return x - x @ hat


def band_spectrum(
    maps: xr.DataArray | np.ndarray,
    periods: Sequence[float] | np.ndarray | None = None,
    *,
    detrend: Literal["monotone", "linear", "mean", "none"] = "monotone",
    row_dim: str = QUERY,
    col_dim: str = KEY,
) -> xr.DataArray:
    """Periodicity spectrum of the band profile: how much of the profile's shape beyond the
    diagonal is a wave of each period. New dim ``period`` (frames), other dims broadcast.

    With ``b(d)`` the :func:`band_profile` (mean attention at frame offset ``d``), take the
    offsets ``d = 1 .. N-1`` (the diagonal ``d = 0`` is self-attention, not an echo), remove
    the decay with distance to get ``x(d)`` (``detrend``: "monotone", the default, subtracts
    the least-squares non-increasing fit, so that a profile that only decays leaves nothing
    and an echo, attention rising again with distance, is what remains; "linear" the
    least-squares line in ``d``; "mean" the mean; "none" nothing), and for each period ``P``::

        power(P) = |sum_d x(d) exp(-2 pi i d / P)|^2 / ((N - 1) * sum_d x(d)^2)

    in [0, 1] (Cauchy-Schwarz); 0 where ``x`` is all zero, NaN for a map with NaN. A rotary frame encoding whose
    channel pair turns once every ``P`` frames brings attention back at offsets ``P, 2P, ...``
    (echoes): the spectrum peaks at ``P``. ``periods`` defaults to ``2, 3, ..., N - 1``.
    Needs ``N >= 4``.
    """
    if detrend not in _DETREND:
        raise ValueError(f"detrend must be one of {', '.join(_DETREND)}; got {detrend!r}")
    # (the profile is small: maps loaded lazily from a store are computed here)
    profile = band_profile(maps, row_dim, col_dim).compute()
    n = profile.sizes[OFFSET]
    if n < 4:
        raise ValueError(f"a band spectrum needs maps of at least 4 frames, got {n}")
    if periods is None:
        grid = np.arange(2, n, dtype=np.float64)
    else:
        grid = np.asarray(periods, dtype=np.float64).ravel()
        if grid.size == 0 or not np.isfinite(grid).all() or (grid <= 0).any():
            raise ValueError(f"periods must be positive finite numbers, got {periods!r}")
    d = np.arange(1, n, dtype=np.float64)
    phase = 2 * np.pi * d[:, None] / grid[None, :]  # [M, P]
    cos, sin = np.cos(phase), np.sin(phase)

    def spectrum(b: np.ndarray) -> np.ndarray:
        x = _detrended(b[..., 1:], d, detrend)
        energy = (x**2).sum(-1, keepdims=True) * len(d)
        power = (x @ cos) ** 2 + (x @ sin) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(energy > 0, power / np.where(energy > 0, energy, 1.0), 0.0)
        return np.where(np.isnan(energy), np.nan, out)

    out = xr.apply_ufunc(
        spectrum,
        profile.drop_vars(OFFSET),
        input_core_dims=[[OFFSET]],
        output_core_dims=[[PERIOD]],
    )
    return out.assign_coords({PERIOD: grid}).rename("band_spectrum")


def echo_period(
    maps: xr.DataArray | np.ndarray,
    periods: Sequence[float] | np.ndarray | None = None,
    *,
    detrend: Literal["monotone", "linear", "mean", "none"] = "monotone",
    row_dim: str = QUERY,
    col_dim: str = KEY,
) -> xr.DataArray:
    """The period (frames) where :func:`band_spectrum` is largest, per map; its power in the
    coordinate ``echo_power``. Compare with ``attnlab.pe_report``'s ``period_latent``. Where
    the spectrum is all zero (no echo at all) the first period is returned with power 0; a
    map with NaN gives NaN for both."""
    spec = band_spectrum(maps, periods, detrend=detrend, row_dim=row_dim, col_dim=col_dim)
    idx = spec.fillna(-1.0).argmax(PERIOD)
    period = spec[PERIOD].isel({PERIOD: idx}).drop_vars(PERIOD, errors="ignore")
    power = spec.isel({PERIOD: idx}).drop_vars(PERIOD, errors="ignore")
    period = period.where(power.notnull())
    return period.assign_coords(echo_power=power).rename("echo_period")


def echo_peaks(
    maps: xr.DataArray | np.ndarray, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.DataArray:
    """Offsets where attention comes back: bool over ``offset`` (0..N-1), True where the band
    profile ``b(d)`` exceeds both neighbours, ``b(d) > b(d - 1)`` and ``b(d) > b(d + 1)``
    (``1 <= d <= N - 2``; the ends are never peaks). A map that only decays with distance has
    none; a rotary period ``P`` shows as peaks near ``P, 2P, ...``. A map with NaN (whose band
    profile is NaN) has none: check it with :func:`band_profile` first."""
    profile = band_profile(maps, row_dim, col_dim)
    n = profile.sizes[OFFSET]
    inner = np.zeros(n, dtype=bool)
    inner[1 : n - 1] = True
    left = profile.shift({OFFSET: 1})
    right = profile.shift({OFFSET: -1})
    peak = (profile > left) & (profile > right) & xr.DataArray(inner, dims=[OFFSET])
    return peak.rename("echo_peaks")


def sink_score(
    maps: xr.DataArray | np.ndarray, frame: int = 0, row_dim: str = QUERY, col_dim: str = KEY
) -> xr.DataArray:
    """Attention mass on one key frame (default frame 0, the "sink") from the other frames.

    ``mean_{i != frame} p_{i, frame}`` with rows divided by their sum first (a no-op for
    attention probabilities); other dims (layer, head, ...) broadcast, so a recording reduced
    per head gives one score per layer and head. A uniform map gives ``1 / N``; a map where
    every frame attends to frame 0 alone gives 1. Needs ``N >= 2``."""
    maps = _as_maps(maps, row_dim, col_dim)
    n = _square(maps, row_dim, col_dim)
    if n < 2:
        raise ValueError(f"a sink score needs maps of at least 2 frames, got {n}")
    frame = _frame_count("frame", frame, 0)
    if frame >= n:
        raise ValueError(f"frame must be a key frame index in 0..{n - 1}, got {frame}")
    _check_nonnegative(maps, "sink_score")
    rows = _row_normalised(maps, col_dim).isel({col_dim: frame}, drop=True)
    others = np.arange(n) != frame
    score = rows.isel({row_dim: others}).mean(row_dim, skipna=False)
    return score.where(_whole(maps, row_dim, col_dim)).rename("sink_score")


def lag_similarity(video: object) -> xr.DataArray:
    """Mean self-similarity of a video's frames at each lag: dim ``offset`` (0..F-1).

    Frames (any input :func:`attnlab.data.video.to_unit_frames` reads) in [0, 1] minus the
    clip's mean frame (what never changes: background, static objects), flattened to vectors
    ``x_i``; ``s(L) = mean_i cos(x_i, x_{i+L})`` over the ``F - L`` pairs (a zero vector's
    cosine counts as 0). ``s(0) = 1`` unless frames equal the mean; a clip looped with period
    ``P`` has ``s(kP) = 1``."""
    from attnlab.data.video import to_unit_frames

    frames = to_unit_frames(video, dtype=np.float64)  # type: ignore[arg-type]
    f = len(frames)
    x = frames.reshape(f, -1)
    x = x - x.mean(0, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0)
    sim = unit @ unit.T
    curve = np.array([np.diagonal(sim, lag).mean() for lag in range(f)])
    return xr.DataArray(curve, dims=[OFFSET], coords={OFFSET: np.arange(f)}, name="lag_similarity")


def repetition_score(video: object, train_frames: int) -> xr.DataArray:
    """Output-side repetition: the largest :func:`lag_similarity` at lags ``>= train_frames``.

    A scalar in [-1, 1] with the lag where it is reached as its ``offset`` coordinate. A video
    that repeats a stretch of itself at a lag at or beyond the training length (a loop with
    period ``P``: lags ``P, 2P, ...``) scores 1; a video that keeps moving to new states scores
    low. ``score >= REPETITION_FLAG`` (0.9) flags repetition. ``train_frames`` is in the
    video's frames (not latent frames); the video must be longer than it. A static video (every
    frame its mean) scores 0: nothing moves, so nothing repeats.
    """
    train_frames = _frame_count("train_frames", train_frames, 1)
    curve = lag_similarity(video)
    f = curve.sizes[OFFSET]
    if f <= train_frames:
        raise ValueError(
            f"repetition_score needs a video longer than train_frames={train_frames} "
            f"(lags >= train_frames must exist), got {f} frames"
        )
    tail = curve.isel({OFFSET: slice(train_frames, None)})
    best = int(tail.argmax(OFFSET))
    return tail.isel({OFFSET: best}).rename("repetition_score")
