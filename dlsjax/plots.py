"""Figures written by the commands (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import pathlib

import numpy as np


def alpha_heatmaps(
  weights: dict[str, np.ndarray], op_set, topologies, path: str | pathlib.Path, title: str = ""
) -> None:
  """One heatmap per part: rows are edges (``src->dst``), columns operations, softmax values."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  parts = list(weights)
  heights = [max(2.0, 0.32 * weights[p].shape[0] + 1.2) for p in parts]
  fig, axes = plt.subplots(
    len(parts), 1, figsize=(1.0 + 0.75 * len(op_set), sum(heights)),
    gridspec_kw={"height_ratios": heights}, squeeze=False,
  )  # fmt: skip
  for ax, p in zip(axes[:, 0], parts, strict=True):
    w = np.asarray(weights[p])
    topo = topologies[p]
    labels = [f"{s}->{d}" for s, d in topo.edges]
    im = ax.imshow(
      w, cmap="viridis", aspect="auto"
    )  # own range per part: early alphas differ little
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(len(op_set)), op_set, rotation=45, ha="right", fontsize=7)
    for (i, j), v in np.ndenumerate(w):
      ax.text(
        j,
        i,
        f"{v:.2f}",
        ha="center",
        va="center",
        fontsize=5,
        color="w" if v < w.max() / 2 else "k",
      )
    ax.set_title(f"{p}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
