"""Screening measured (E, |Q|) spectra for bad pixels, bad energy rows and weights that would rule a fit.

A fit by least squares follows its largest residuals: one energy row 100× too high, or a few pixels
whose σ is tiny (a pixel of about one count), can carry most of the χ² and move every constant
without a sign in the fit's own summary. :func:`screen_spectrum` looks at the data before any
model:

- **pixels**: each valid pixel against the median of its valid neighbours (3 × 3 in E and |Q|); the
  difference over a robust spread of such differences (1.4826 × their median absolute deviation,
  over all pixels or over the pixel's energy row, whichever is larger) is its score, and a pixel
  scoring above ``threshold`` is named;
- **rows**: each energy row's median ratio to the rows above and below it, pixel by pixel; a row
  whose ratio departs from 1 by more than ``row_threshold`` robust spreads of all rows' ratios is
  named (a detector or normalization fault, seen as a row scaled as a whole);
- **clipped pixels**: pixels that hold exactly the spectrum's smallest (or largest) value, when at
  least ``clip_count`` of them do: a reduction that set negative intensities to zero (the shipped
  ARCS Al χ'', 200–238 pixels per temperature, mostly at 10–11 meV) leaves runs of one value that
  are limits, not measurements (censored data; they also give σ = 0 to any noise estimate);
- **weights**: with ``sigma``, the share of the total weight Σ1/σ² held by the 1 % of pixels with
  the smallest σ; above ``weight_share`` it says so and suggests a floor (a Poisson likelihood,
  ``loss="poisson"``, is the right fix for raw counts).

The result (:class:`Screen`) holds the flagged pixels and rows, a mask without them, and a report
naming them (energy in meV, |Q| in Å⁻¹, value, score). Nothing is removed silently: pass
``screen.mask`` to the observable to leave them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Screen", "screen_spectrum", "pixel_noise", "noise_map"]

MAD_TO_SIGMA = 1.4826


@dataclass
class Screen:
    """What :func:`screen_spectrum` found. ``pixels``: (energy, |Q|, value, score) of each flagged
    pixel; ``rows``: (energy, ratio to its neighbours, score) of each flagged row; ``clipped``:
    (energy, |Q|, value) of each pixel at a clipping limit and ``clipped_mask`` (E, Q) the same as a
    mask (to keep them as censored points instead: ``Problem(censored=-clipped_mask[m].astype(int))``
    over the pixels m = ``mask | clipped_mask``); ``mask`` (E, Q): the valid pixels less the flagged
    and clipped ones; ``weight_share``: the share of Σ1/σ² in the 1 % of pixels
    with the smallest σ (None without σ); ``notes``: what the screen says, one line each."""

    pixels: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    clipped: list = field(default_factory=list)
    mask: np.ndarray | None = None
    clipped_mask: np.ndarray | None = None
    weight_share: float | None = None
    notes: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.pixels or self.rows or self.clipped or self.notes)

    def report(self) -> str:
        if self.clean:
            return "screen: no outlying pixel or row, no pixel set dominating the weights"
        out = list(self.notes)
        if self.clipped:
            values = sorted({v for _, _, v in self.clipped})
            es = sorted({e for e, _, _ in self.clipped})
            held = ", ".join(f"{v:.6g}" for v in values)
            out.append(f"{len(self.clipped)} pixel(s) hold exactly the value(s) {held} "
                       f"at the edge of the data's range (E {es[0]:g}–{es[-1]:g} meV): clipped by the reduction "
                       "(censored: the true value lies beyond the limit), not measured values")
        if self.rows:
            out.append(f"{len(self.rows)} energy row(s) scaled as a whole: " + ", ".join(
                f"E = {e:g} meV (×{r:.3g} its neighbours, score {z:.1f})" for e, r, z in self.rows))
        by_row: dict = {}
        for p in self.pixels:
            by_row.setdefault(p[0], []).append(p)
        for e, ps in sorted(by_row.items()):
            if len(ps) >= 3:
                qs = sorted(p[1] for p in ps)
                out.append(f"energy row E = {e:g} meV: {len(ps)} outlying pixels at |Q| {qs[0]:g}–{qs[-1]:g} Å⁻¹ "
                           f"(a partial row fault?)")
        if self.pixels:
            shown = sorted(self.pixels, key=lambda p: -abs(p[3]))[:20]
            out.append(f"{len(self.pixels)} outlying pixel(s)" + (" (the 20 worst)" if len(self.pixels) > 20 else "")
                       + ": " + ", ".join(f"(E {e:g} meV, |Q| {q:g} Å⁻¹: {v:.4g}, score {z:.1f})"
                                          for e, q, v, z in shown))
        out.append("leave them out with mask=screen.mask")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.report()


def _neighbour_median(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The median of each pixel's valid 3 × 3 neighbours (the pixel itself left out), NaN where none."""
    E, Q = x.shape
    pad = np.full((E + 2, Q + 2), np.nan)
    pad[1:-1, 1:-1] = np.where(valid, x, np.nan)
    stack = [pad[1 + i : 1 + i + E, 1 + j : 1 + j + Q] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    with np.errstate(all="ignore"), _quiet():
        return np.nanmedian(np.stack(stack), axis=0)


class _quiet:
    """Silence numpy's "All-NaN slice" warnings (an isolated pixel has no neighbour)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _robust_spread(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan")
    return MAD_TO_SIGMA * float(np.median(np.abs(v - np.median(v))))


def _row_ratios(x, valid, excluded) -> np.ndarray:
    """Each row's median ratio to the nearest rows above and below that are not excluded."""
    n = len(x)
    ratio = np.full(n, np.nan)
    keep = [j for j in range(n) if j not in excluded]
    for i in range(n):
        nb = [j for j in keep if j < i][-1:] + [j for j in keep if j > i][:1]
        if not nb:
            continue
        with _quiet():
            ref = np.nanmean(np.stack([np.where(valid[j], x[j], np.nan) for j in nb]), axis=0)
        ok = valid[i] & np.isfinite(ref) & (np.abs(ref) > 0)
        if ok.sum() >= 3:
            ratio[i] = float(np.median(x[i, ok] / ref[ok]))
    return ratio


def _screen_rows(x, valid, row_threshold) -> list[tuple[int, float, float]]:
    """(row, ratio, score) of the rows scaled as a whole: the worst first, its neighbours then judged
    against the rows beyond it."""
    bad: list[tuple[int, float, float]] = []
    while True:
        excluded = [b[0] for b in bad]
        ratio = _row_ratios(x, valid, set(excluded))
        lr = np.log(np.abs(ratio))
        spread = _robust_spread(np.delete(lr, excluded))
        if not (np.isfinite(spread) and spread > 0):
            return bad
        score = (lr - np.nanmedian(np.delete(lr, excluded))) / spread
        score[excluded] = 0.0
        worst = int(np.nanargmax(np.abs(np.nan_to_num(score))))
        if abs(np.nan_to_num(score[worst])) <= row_threshold:
            return bad
        bad.append((worst, float(ratio[worst]), float(score[worst])))


def _screen_pixels(x, good, threshold) -> tuple[np.ndarray, np.ndarray]:
    """(flagged (E, Q) bool, scores): each pixel against the median of its neighbours, the flagged
    ones left out of every neighbourhood until the flags settle (a pixel beside a bad one is not
    blamed for it). A row whose spectrum changes fast (low energies, a steep Bose factor) has larger
    differences everywhere, so each row's own spread, where larger, is its scale, and a row's common
    offset from its neighbours (a smooth change in E) is not a pixel's fault."""
    flagged = np.zeros_like(good)
    z = np.full(x.shape, np.nan)
    for _ in range(5):
        med = _neighbour_median(x, good & ~flagged)
        r = np.where(good & np.isfinite(med), x - med, np.nan)
        s = _robust_spread(np.where(flagged, np.nan, r))
        if not (np.isfinite(s) and s > 0):
            break
        with _quiet():
            offset = np.nanmedian(np.where(flagged, np.nan, r), axis=1)
        r = r - np.nan_to_num(offset)[:, None]
        rows = np.array([_robust_spread(np.where(flagged[i], np.nan, r[i])) for i in range(len(x))])
        z = r / np.fmax(s, np.nan_to_num(rows, nan=s))[:, None]
        new = good & (np.abs(np.nan_to_num(z)) > threshold)
        if np.array_equal(new, flagged):
            break
        flagged = new
    return flagged, z


def _weight_note(sg, valid, limit, out: Screen) -> None:
    """The share of Σ1/σ² in the 1 % of pixels with the smallest σ, and a note where it rules."""
    w = 1.0 / sg[valid] ** 2
    if np.any(~np.isfinite(w)):
        out.notes.append(f"{int((~np.isfinite(w)).sum())} valid pixel(s) have σ = 0 or not finite: "
                         "they would carry infinite weight")
        w = w[np.isfinite(w)]
    if len(w):
        k = max(1, int(np.ceil(0.01 * len(w))))
        out.weight_share = float(np.sort(w)[-k:].sum() / w.sum())
        if out.weight_share > limit:
            floor = float(np.median(sg[valid]))
            out.notes.append(f"the 1 % of pixels with the smallest σ hold {100 * out.weight_share:.0f} % of the χ² "
                             f"weight: raw counts want loss='poisson'; otherwise floor σ (e.g. at its median, "
                             f"{floor:.3g})")


def _clipped(x: np.ndarray, valid: np.ndarray, count: int) -> np.ndarray:
    """The valid pixels holding exactly the smallest or the largest valid value, where at least
    ``count`` pixels do (one pixel at the extreme is just the extreme)."""
    out = np.zeros_like(valid)
    if count and valid.any():
        for v in (np.min(x[valid]), np.max(x[valid])):
            at = valid & (x == v)
            if at.sum() >= count:
                out |= at
    return out


def screen_spectrum(intensity, energies, q, mask=None, sigma=None, threshold: float = 8.0,
                    row_threshold: float = 8.0, weight_share: float = 0.2, clip_count: int = 5) -> Screen:
    """Screen a measured spectrum ``intensity`` (E, Q) on ``energies`` (E,) meV × ``q`` (Q,) Å⁻¹
    (module docstring). ``mask`` (E, Q) bool: the valid pixels (default: the finite ones);
    ``sigma`` (E, Q): their uncertainties, for the weight check. ``threshold``, ``row_threshold``:
    scores (robust standard deviations) above which a pixel or a row is named; ``weight_share``: the
    share of Σ1/σ² in the smallest-σ 1 % of pixels above which the weights are named;
    ``clip_count``: how many pixels at exactly the extreme value make a clipping limit (0: no check)."""
    x = np.asarray(intensity, dtype=float)
    E, Q = np.asarray(energies, dtype=float), np.asarray(q, dtype=float)
    if x.shape != (len(E), len(Q)):
        raise ValueError(f"intensity must have shape (E, Q) = {(len(E), len(Q))}, got {x.shape}")
    valid = np.isfinite(x) if mask is None else (np.asarray(mask, bool) & np.isfinite(x))
    if valid.shape != x.shape:
        raise ValueError(f"mask must have shape {x.shape}, got {valid.shape}")
    clip = _clipped(x, valid, int(clip_count))
    out = Screen(mask=valid.copy(), clipped_mask=clip, clipped=[(float(E[i]), float(Q[j]), float(x[i, j]))
                                                                for i, j in zip(*np.nonzero(clip), strict=True)])
    valid = valid & ~clip
    # rows first: a row scaled as a whole would otherwise show as many outlying pixels
    bad_rows = _screen_rows(x, valid, row_threshold)
    out.rows = sorted((float(E[i]), ratio, score) for i, ratio, score in bad_rows)
    good = valid.copy()
    good[[b[0] for b in bad_rows]] = False
    flagged, z = _screen_pixels(x, good, threshold)
    out.pixels = [(float(E[i]), float(Q[j]), float(x[i, j]), float(z[i, j]))
                  for i, j in zip(*np.nonzero(flagged), strict=True)]
    out.mask = good & ~flagged
    if sigma is not None:
        sg = np.asarray(sigma, dtype=float)
        if sg.shape != x.shape:
            raise ValueError(f"sigma must have shape {x.shape}, got {sg.shape}")
        _weight_note(sg, valid, weight_share, out)
    return out


def pixel_noise(intensity, mask=None) -> dict[str, float]:
    """The noise of a spectrum's pixels estimated from the data alone: the second differences
    x_i − (x_{i−1} + x_{i+1})/2 along each axis (variance 3σ²/2 for independent noise on a signal
    that is locally linear over three pixels), their robust spread (1.4826 × MAD) over √1.5.
    Returns ``{"energy": σ_E, "q": σ_Q, "sigma": the smaller}``: the two agree where the noise is
    independent from pixel to pixel and the pixels are fine for the signal; sharp structure
    raises them (the smaller is the safer estimate)."""
    x = np.asarray(intensity, dtype=float)
    valid = np.isfinite(x) if mask is None else (np.asarray(mask, bool) & np.isfinite(x))
    out = {}
    for axis, key in ((0, "energy"), (1, "q")):
        a = np.moveaxis(np.where(valid, x, np.nan), axis, 0)
        d = a[1:-1] - 0.5 * (a[:-2] + a[2:])
        d = d[np.isfinite(d)]
        out[key] = _robust_spread(d) / np.sqrt(1.5) if len(d) else float("nan")
    out["sigma"] = float(np.nanmin([out["energy"], out["q"]]))
    return out


#: The median of a χ²₁ variable: median(d²) = 0.4549 var(d) for Gaussian d.
_MEDIAN_CHI2_1 = 0.454936


def noise_map(intensity, mask=None, window: int = 9, axis: int = 0, floor: float = 0.25,
              where=None) -> np.ndarray:
    """The noise of each pixel of a spectrum, from the data alone, where it varies across the map.

    Measured spectra are heteroscedastic: counts, the detector coverage and the Bose factor change
    from place to place (the ARCS Al χ'' map: σ from 0.018 to 0.048 between its 10th and 90th
    percentiles). One pooled robust spread (:func:`pixel_noise`) then gives the *typical* σ, below
    the rms σ that a model fitting to the noise leaves as its residual rms. Here the squared second
    differences d² along ``axis`` (0: energy transfer, the axis along which the signal is smoothest
    for a powder spectrum; d has variance 3σ²/2) are summarized by their median over a window ×
    window neighbourhood of valid pixels (robust to single bad pixels; median(d²) = 0.4549 var d for
    Gaussian noise), and σ² = median(d²)/(1.5 × 0.4549). Pixels with no valid second difference in
    their window take the map's rms, and no pixel is given less than ``floor`` × the map's rms (runs
    of equal values — data clipped at a limit by their reduction — would otherwise get σ = 0 and
    rule a χ²). Returns σ, the shape of ``intensity``, NaN outside the mask — or outside ``where``
    (E, Q) bool, the pixels to give a σ from their neighbourhood, e.g. clipped pixels left out of
    ``mask`` (which holds the pixels whose values measure the noise).

    A model that fits to the noise has rms residual √(mean σ²) over these pixels (see
    :func:`xtds.fitting.diagnostics.spectrum_diagnostics`); the map is also the σ to give a χ² fit
    of spectra that come without errors."""
    from scipy.ndimage import generic_filter

    x = np.asarray(intensity, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"noise_map takes a 2-D (E, |Q|) map, got shape {x.shape}")
    if int(window) != window or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd number of pixels ≥ 3, got {window!r}")
    valid = np.isfinite(x) if mask is None else (np.asarray(mask, bool) & np.isfinite(x))
    a = np.moveaxis(np.where(valid, x, np.nan), axis, 0)
    d2 = np.full(a.shape, np.nan)
    d2[1:-1] = (a[1:-1] - 0.5 * (a[:-2] + a[2:])) ** 2
    d2 = np.moveaxis(d2, 0, axis)
    if not np.isfinite(d2).any():
        raise ValueError("no three neighbouring valid pixels along that axis: the map is too small for a noise map")
    med = generic_filter(d2, _nanmedian, size=int(window), mode="constant", cval=np.nan)
    var = med / (1.5 * _MEDIAN_CHI2_1)
    fill = np.nanmean(var[valid]) if np.isfinite(var[valid]).any() else np.nanmedian(d2) / (1.5 * _MEDIAN_CHI2_1)
    var = np.where(np.isfinite(var), var, fill)
    var = np.maximum(var, float(floor) ** 2 * np.mean(var[valid]))
    out = valid if where is None else np.asarray(where, bool)
    if out.shape != x.shape:
        raise ValueError(f"where must have the map's shape {x.shape}, got {out.shape}")
    return np.where(out, np.sqrt(var), np.nan)


def _nanmedian(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) >= 3 else float("nan")
