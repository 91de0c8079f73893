"""Plots (matplotlib, the optional ``viz`` extra), imported only when called."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_dispersion"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'xtds[viz]'") from exc
    return plt


def plot_dispersion(dispersion, dos=None, ax=None, title: str | None = None, **line_kwargs):
    """Plot a dispersion DataArray (from :func:`xtds.dispersion`), optionally with a DOS panel.

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
        ax_dos.fill_betweenx(dos["frequency"].values, 0, dos.values, color="C1", alpha=0.3)
        ax_dos.set_xlabel("DOS")
        ax_dos.set_xlim(left=0)
        ax_dos.tick_params(labelleft=False)
    return fig
