"""The loss plot, losses.png: one panel per loss family (A and B together), a smoothed line over the
faint raw one, the learning rate beneath. matplotlib is optional (`pip install cyclebatch[train]`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from .failure import writing

# (panel title, the two losses it holds); LSGAN values for D and the adversarial G terms, weighted L1 for the rest
PANELS = (
    ("discriminators (LSGAN, halved)", ("D_A", "D_B")),
    ("generators, adversarial (LSGAN)", ("G_A", "G_B")),
    ("cycle consistency (L1 x lambda)", ("cycle_A", "cycle_B")),
    ("identity (L1 x lambda x lambda_identity)", ("idt_A", "idt_B")),
)
COLOURS = ("#1f77b4", "#d62728")  # A blue, B red in every panel


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def smooth(values: np.ndarray, weight: Optional[float] = None) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing). The default weight spans about a
    twentieth of the series, so a long run and a short one look equally smooth."""
    if weight is None:
        weight = 1.0 - 1.0 / max(1.0, len(values) / 20)
    out = np.empty(len(values))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        acc = acc * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out[i] = acc / norm if norm else v
    return out


def plot_losses(rows: list[dict], path: Path, title: str = "") -> bool:
    """Draw rows of losses.csv into `path` (written atomically); False when there is nothing to draw yet
    (fewer than two rows) or matplotlib is missing."""
    if len(rows) < 2 or not have_matplotlib():
        return False
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    its = np.array([float(r["iteration"]) for r in rows])
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    # identity off (lambda_identity 0, or mismatched channels): an all-zero panel says nothing
    panels = [(t, ks) for t, ks in PANELS if any(np.any(col(k) != 0) for k in ks)]
    heights = [3] * len(panels) + [1.6]
    fig = Figure(figsize=(8, 1.9 * len(panels) + 1.6), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels) + 1, 1, sharex=True, height_ratios=heights)
    for ax, (panel_title, keys) in zip(axes, panels):
        for key, colour in zip(keys, COLOURS):
            v = col(key)
            ax.plot(its, v, color=colour, alpha=0.22, linewidth=0.8)
            ax.plot(its, smooth(v), color=colour, linewidth=1.8, label=key)
        ax.set_title(panel_title, fontsize=10, loc="left")
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    lr_ax = axes[-1]
    lr_ax.plot(its, col("lr"), color="#444444", linewidth=1.4)
    lr_ax.set_title("learning rate", fontsize=10, loc="left")
    lr_ax.yaxis.set_major_locator(MaxNLocator(3, steps=[1, 2, 5, 10]))
    lr_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.0002, not an offset label
    lr_ax.set_ylim(bottom=0)
    lr_ax.grid(True, alpha=0.3)
    lr_ax.xaxis.set_major_locator(MaxNLocator(8, integer=True, steps=[1, 2, 2.5, 5, 10]))
    lr_ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=11)
    png = io.BytesIO()  # drawn first: the file is then written by one call whose failure `writing` sees
    fig.savefig(png, format="png")
    with writing(path) as tmp:
        tmp.write_bytes(png.getvalue())
    return True
