"""Plots (matplotlib, the optional ``viz`` extra), imported only when called."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_dispersion", "plot_slices", "plot_convergence", "plot_residuals", "plot_spectrum_residuals"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'xtds[viz]'") from exc
    return plt


def plot_dispersion(dispersion, dos=None, ax=None, title: str | None = None, stderr=None, dos_stderr=None,
                    **line_kwargs):
    """Plot a dispersion DataArray (from :func:`xtds.dispersion`), optionally with a DOS panel
    and, with ``stderr`` / ``dos_stderr`` (a fit's ``dispersion_stderr`` / ``dos_stderr``), ±1σ bands.

    Returns the matplotlib Figure. Breaks in the path (e.g. ``U|K``) are drawn as gaps.
    """
    plt = _pyplot()
    if ax is None:
        if dos is not None:
            fig, (ax, ax_dos) = plt.subplots(
                1, 2, figsize=(8, 4.5), sharey=True, gridspec_kw={"width_ratios": [4, 1], "wspace": 0.05}
            )
        else:
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            ax_dos = None
    else:
        fig, ax_dos = ax.figure, None
    x = dispersion["distance"].values
    y = dispersion.values
    labels = list(dispersion["label"].values)
    # split into continuous pieces at repeated distances (path breaks)
    breaks = np.nonzero(np.diff(x) == 0)[0] + 1
    style = {"color": "C0", "lw": 1.5, **line_kwargs}
    for seg in np.split(np.arange(len(x)), breaks):
        ax.plot(x[seg], y[seg], **style)
        if stderr is not None:
            e = np.asarray(stderr.values)[seg]
            for b in range(y.shape[1]):
                ax.fill_between(x[seg], y[seg, b] - e[:, b], y[seg, b] + e[:, b], color=style["color"], alpha=0.25,
                                lw=0)
    ticks = [(x[i], lab) for i, lab in enumerate(labels) if lab]
    for xt, _ in ticks:
        ax.axvline(xt, color="0.7", lw=0.8)
    ax.set_xticks([t for t, _ in ticks])
    ax.set_xticklabels([lab for _, lab in ticks])
    ax.set_xlim(x[0], x[-1])
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel(f"{dispersion.attrs.get('long_name', 'frequency')} ({dispersion.attrs.get('units', '')})")
    if title:
        ax.set_title(title)
    if dos is not None and ax_dos is not None:
        ax_dos.plot(dos.values, dos["frequency"].values, color="C1")
        if dos_stderr is None:
            ax_dos.fill_betweenx(dos["frequency"].values, 0, dos.values, color="C1", alpha=0.3)
        else:
            e = np.asarray(dos_stderr.values)
            ax_dos.fill_betweenx(dos["frequency"].values, dos.values - e, dos.values + e, color="C1", alpha=0.35, lw=0)
        ax_dos.set_xlabel("DOS")
        ax_dos.set_xlim(left=0)
        ax_dos.tick_params(labelleft=False)
    return fig


def _plane(plane: str):
    """'HK0' → ('L', 0.0), 'H0L' → ('K', 0.0), 'HK1' → ('L', 1.0), ..."""
    p = plane.upper().replace(" ", "")
    if len(p) < 3:
        raise ValueError(f"plane must look like 'HK0', 'H0L' or '0KL', got {plane!r}")
    letters = [c for c in p if c in "HKL"]
    if len(letters) != 2:
        raise ValueError(f"plane must name two of H, K, L and a value for the third, got {plane!r}")
    fixed = next(c for c in "HKL" if c not in letters)
    value = float(p.replace(letters[0], "", 1).replace(letters[1], "", 1))
    return fixed, value


def plot_slices(ds, model=None, plane: str = "HK0", vmin=None, vmax=None):
    """Log-intensity slices through a volume (H, K, L): the data, and with ``model`` (a Dataset
    on the same grid, e.g. from ``ds.tds.simulate``) the model scaled to the data and the
    residual log I_data − log I_model. Returns the Figure."""
    plt = _pyplot()
    fixed, value = _plane(plane)
    data = ds["intensity"].sel({fixed: value}, method="nearest")
    panels = [("data", np.log10(data.where(data > 0)))]
    if model is not None:
        mod = model["intensity"].sel({fixed: value}, method="nearest")
        shift = float(np.nanmean(np.log(data.where(data > 0)) - np.log(mod)))
        mod = mod * np.exp(shift)
        panels.append(("model (scaled)", np.log10(mod)))
        panels.append(("residual ln(data/model)", np.log(data.where(data > 0)) - np.log(mod)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, arr) in zip(axes[0], panels, strict=True):
        x, y = arr.dims[0], arr.dims[1]
        kw = {"cmap": "RdBu_r", "center": 0} if title.startswith("residual") else {"vmin": vmin, "vmax": vmax}
        if "center" in kw:
            lim = float(np.nanmax(np.abs(arr.values))) or 1.0
            kw = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
        im = ax.pcolormesh(arr[x].values, arr[y].values, arr.values.T, shading="auto", **kw)
        ax.set_xlabel(f"{x} (r.l.u.)")
        ax.set_ylabel(f"{y} (r.l.u.)")
        ax.set_aspect("equal")
        ax.set_title(f"{title}, {fixed} = {value:g}" + ("" if title.startswith("residual") else " (log10)"))
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def plot_convergence(result, reference=None):
    """The loss history of a fit result, and (with ``reference``, name → eV/Å²) the final error per
    free constant with its standard error (derived constants such as a0 are left out). Returns the
    Figure."""
    plt = _pyplot()
    n = 2 if reference is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    ax = axes[0][0]
    ax.semilogy(result["iteration"].values, result["loss"].values, "o-", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel(result["loss"].attrs.get("long_name", "loss"))
    ax.set_title("convergence")
    if reference is not None:
        derived = result["derived"].values if "derived" in result.coords else [False] * result.sizes["constant"]
        names = [str(c) for c, d in zip(result["constant"].values, derived, strict=True)
                 if str(c) in reference and not d]
        err = [float(result["ifc"].sel(constant=c)) - reference[c] for c in names]
        se = [float(result["ifc_stderr"].sel(constant=c)) for c in names]
        ax2 = axes[0][1]
        ax2.errorbar(range(len(names)), err, yerr=se, fmt="o", capsize=3)
        ax2.axhline(0, color="0.5", lw=0.8)
        ax2.set_xticks(range(len(names)))
        ax2.set_xticklabels(names)
        ax2.set_ylabel("fitted − reference (eV/Å²)")
        ax2.set_title("IFC errors (±1σ)")
    fig.tight_layout()
    return fig


def _binned_panel(ax, diag, dim: str, tag: str, label: str) -> None:
    """One panel: the binned residual means along ``dim`` with ±1 standard-error bars and η²."""
    ax.axhline(0, color="0.6", lw=0.8)
    ax.errorbar(diag[dim].values, diag[f"residual_mean_by_{dim}"].values,
                yerr=diag[f"residual_stderr_by_{dim}"].values, fmt="o-", ms=3, lw=1, capsize=2)
    ax.set_xlabel(label)
    ax.set_title(f"η² = {diag.attrs[f'eta2_{tag}']:.2f}", fontsize=9)


def plot_residuals(diag):
    """Two panels: the binned log residuals of a fit vs |q| and vs the distance to the nearest Bragg
    reflection, with ±1 standard-error bars (``diag`` from :func:`xtds.fitting.diagnostics`, or a fit
    result, whose diagnostics are computed). Returns the Figure."""
    plt = _pyplot()
    if "residual_mean_by_q" not in diag:
        from xtds.fitting.diagnostics import diagnostics

        diag = diagnostics(diag)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, dim, tag, label in ((axes[0], "q", "q", "|q| (Å⁻¹)"),
                                (axes[1], "bragg_distance", "bragg", "distance to nearest Bragg peak (Å⁻¹)")):
        _binned_panel(ax, diag, dim, tag, label)
    axes[0].set_ylabel("mean log(data / model)")
    fig.tight_layout()
    return fig


def plot_spectrum_residuals(diag):
    """Three panels of :func:`xtds.fitting.diagnostics.spectrum_diagnostics`: the map of the
    standardized residuals over (|Q|, E), and their binned means (±1 standard error) against the
    energy transfer and against |Q|. Returns the Figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.4, 1, 1]})
    m = diag["residual_map"]
    im = axes[0].pcolormesh(m["Q"].values, m["E"].values, m.values, cmap="RdBu_r", vmin=-4, vmax=4, shading="nearest")
    fig.colorbar(im, ax=axes[0], label="standardized residual")
    axes[0].set(xlabel="|Q| (Å⁻¹)", ylabel="E (meV)",
                title=f"rms {diag.attrs['rms']:.2f}; smooth share {diag.attrs['smooth_share']:.2f} "
                      f"(noise {diag.attrs['smooth_share_noise']:.3f})")
    axes[0].title.set_fontsize(9)
    for ax, dim, label in ((axes[1], "energy", "E (meV)"), (axes[2], "qnorm", "|Q| (Å⁻¹)")):
        _binned_panel(ax, diag, dim, dim, label)
    axes[1].set_ylabel("mean standardized residual")
    fig.tight_layout()
    return fig
