"""The Latency tab's accuracy-against-latency plot, as a bare matplotlib ``Figure`` (no pyplot state) for ``gr.Plot``.

Gradio's native scatter plot draws points without their names and fits its axes to the data, so the slowest model
sat on the right edge and the most accurate in a corner; here each point carries its model's name and both axes are
padded.
"""

from __future__ import annotations

from matplotlib.figure import Figure

PAD = 0.1  # of the data's range, each side
MIN_PAD_MS, MIN_PAD_MAP = 1.0, 0.01  # when the range is (nearly) zero: one model, or two alike


def padded(values: list[float], least: float) -> tuple[float, float]:
    """Axis limits around ``values``: ``PAD`` of their range each side, at least ``least``."""
    lo, hi = min(values), max(values)
    pad = max(PAD * (hi - lo), least)
    return lo - pad, hi + pad


def tradeoff_figure(points: list[tuple[str, float, float]]) -> Figure | None:
    """Held-out mAP50 against median total ms, one point per ``(model name, ms, mAP50)``, each labelled with its
    name; None when no model has a recorded mAP50 (nothing to plot)."""
    if not points:
        return None
    fig = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(*padded([x for _, x, _ in points], MIN_PAD_MS))
    ax.set_ylim(*padded([y for _, _, y in points], MIN_PAD_MAP))
    middle = sum(ax.get_xlim()) / 2
    for i, (name, x, y) in enumerate(points):
        ax.scatter([x], [y], s=50, color=f"C{i}", zorder=3)
        right = x > middle  # a label on the right half reads leftwards, so that it stays inside the axes
        ax.annotate(name, (x, y), xytext=(-6 if right else 6, 6), textcoords="offset points",
                    ha="right" if right else "left", fontsize=9)
    ax.set_xlabel("median total ms on this device (lower is faster)")
    ax.set_ylabel("held-out mAP50")
    ax.set_title("Held-out mAP50 against latency")
    ax.grid(alpha=0.3)
    return fig
