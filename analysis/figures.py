"""Figures written beside a run's results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def mask_figure(density, overlap, task_names, title: str):
    """Per-task mask density (bars) and pairwise overlap between tasks (IoU heat map)."""
    num = len(task_names)
    fig, (ax_d, ax_o) = plt.subplots(1, 2, figsize=(4 + 0.5 * num, 3 + 0.25 * num),
                                     gridspec_kw={"width_ratios": [1, 1.4]})
    ax_d.barh(np.arange(num), density)
    ax_d.set_yticks(np.arange(num), task_names, fontsize=7)
    ax_d.invert_yaxis()
    ax_d.set_xlim(0, 1)
    ax_d.set_xlabel("density")
    image = ax_o.imshow(np.asarray(overlap), vmin=0, vmax=1, cmap="viridis")
    ax_o.set_xticks(np.arange(num), task_names, rotation=90, fontsize=7)
    ax_o.set_yticks(np.arange(num), task_names, fontsize=7)
    ax_o.set_title("overlap (intersection / union)", fontsize=9)
    fig.colorbar(image, ax=ax_o, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
