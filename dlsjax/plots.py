"""Figures written by the commands (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import pathlib

import numpy as np

from dlsjax import parts


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


def _node_label(part: str, node: int, n_inputs: int, modalities: tuple[str, ...]) -> str:
  if node < n_inputs:
    if not parts.is_stem(part):
      return f"$c_{{k-{2 - node}}}$"
    return modalities[node] if node < len(modalities) else f"in{node}"
  return str(node - n_inputs)


def genotype_figure(geno, path: str | pathlib.Path, *, title: str = "", modalities=None) -> None:
  """One panel per derived part, drawn like the paper's Fig. 2 (no Graphviz needed).

  ``modalities`` names a stem's input nodes (``{stem: (modality, ...)}``).

  Input nodes on the left, inner nodes left to right, an output node on the
  right (a cell concatenates its inner nodes; a learnable stem's output is its
  last inner node). Edges are arrows labelled with their operation.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  parts = list(geno.parts)
  fig, axes = plt.subplots(len(parts), 1, figsize=(9, 2.6 * len(parts)), squeeze=False)
  for ax, p in zip(axes[:, 0], parts, strict=True):
    part = geno.parts[p]
    n_in, n_inner = part.n_inputs, len(part.nodes)
    names = tuple((modalities or {}).get(p, ()))
    pos = {i: (0.0, (n_in - 1) / 2 - i) for i in range(n_in)}
    for j in range(n_inner):
      pos[n_in + j] = (1.5 + 1.6 * j, 0.9 * (-1) ** j * 0.6)
    out_xy = (1.5 + 1.6 * n_inner, 0.0)
    for j, node in enumerate(part.nodes):
      dst = n_in + j
      for k, (op, src) in enumerate(node):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        rad = 0.25 * (1 if k % 2 else -1) if src < dst - 1 else 0.0
        ax.annotate(
          "", xy=(x1, y1), xytext=(x0, y0),
          arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.0,
                          shrinkA=11, shrinkB=11, connectionstyle=f"arc3,rad={rad}"),
        )  # fmt: skip
        # The label sits on the arc: the midpoint of matplotlib's arc3 Bezier curve.
        mx, my = (x0 + x1) / 2 + 0.5 * rad * (y1 - y0), (y0 + y1) / 2 - 0.5 * rad * (x1 - x0)
        ax.text(mx, my, op, fontsize=6.5, ha="center", va="center", color="C3",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))  # fmt: skip
    sinks = [n_in + n_inner - 1] if part.concat_last else [n_in + j for j in range(n_inner)]
    for s in sinks:
      ax.annotate(
        "", xy=out_xy, xytext=pos[s],
        arrowprops=dict(arrowstyle="-|>", color="0.7", lw=0.8, shrinkA=11, shrinkB=11),
      )  # fmt: skip
    for node, (x, y) in pos.items():
      face = "#cfe3f7" if node < n_in else "#f7e1c9"
      ax.text(x, y, _node_label(p, node, n_in, names), ha="center", va="center", fontsize=8,
              bbox=dict(boxstyle="round,pad=0.35", fc=face, ec="0.3"))  # fmt: skip
    out_name = "output" if part.concat_last else "$c_{k}$"
    ax.text(*out_xy, out_name, ha="center", va="center", fontsize=8,
            bbox=dict(boxstyle="round,pad=0.35", fc="#d9f2d0", ec="0.3"))  # fmt: skip
    ax.set_xlim(-0.6, out_xy[0] + 0.6)
    ax.set_ylim(-(n_in + 1) / 2 - 0.3, (n_in + 1) / 2 + 0.3)
    ax.axis("off")
    ax.set_title(p, fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def roc_micro(band: dict, auc: float, ci, path, *, title: str = "") -> None:
  """Micro-averaged ROC curve with its bootstrap 95% band (paper Fig. 3)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4.2, 4.0))
  ax.fill_between(band["fpr"], band["low"], band["high"], alpha=0.25, label="95% CI")
  ax.plot(band["fpr"], band["tpr"], lw=1.8, label=f"micro AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
  _finish_roc(plt, fig, ax, title or "micro-averaged ROC", path)


def roc_per_class(curves: dict[str, tuple], aucs: dict[str, float], path, *, title: str = ""):
  """One-vs-rest ROC curve of every class (``curves[name] = (fpr, tpr)``)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4.2, 4.0))
  for name, (fpr, tpr) in curves.items():
    ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUC {aucs[name]:.3f})")
  _finish_roc(plt, fig, ax, title or "per-class ROC (one vs rest)", path)


def roc_comparison(curves: dict[str, tuple], path, *, title: str = "") -> None:
  """Several models' micro-averaged ROC curves on one plot (paper Fig. 3 c, d)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4.6, 4.4))
  for label, (fpr, tpr) in curves.items():
    ax.plot(fpr, tpr, lw=1.4, label=label)
  _finish_roc(plt, fig, ax, title or "micro-averaged ROC", path)


def _finish_roc(plt, fig, ax, title: str, path) -> None:
  """Chance diagonal, axes, legend; save and close."""
  ax.plot([0, 1], [0, 1], "k--", lw=0.8)
  ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01))
  ax.set_title(title, fontsize=9)
  ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def confusion(matrix, classes, path, *, title: str = "") -> None:
  plt = _pyplot()
  m = np.asarray(matrix)
  fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(classes), 1.0 + 0.7 * len(classes)))
  ax.imshow(m, cmap="Blues")
  for (i, j), v in np.ndenumerate(m):
    ax.text(j, i, str(v), ha="center", va="center", color="w" if v > m.max() / 2 else "k")
  ax.set_xticks(range(len(classes)), classes)
  ax.set_yticks(range(len(classes)), classes)
  ax.set(xlabel="predicted", ylabel="true")
  ax.set_title(title or "confusion matrix", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def gradcam_panel(images: dict, heatmap, overlay_on: str, path, *, title: str = "") -> None:
  """Each modality, the Grad-CAM heatmap and its overlay on ``overlay_on`` (paper Fig. 4)."""
  plt = _pyplot()

  def show(x):
    x = np.asarray(x, np.float32)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
    return x[..., 0] if x.shape[-1] == 1 else x

  n = len(images) + 2
  fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.6))
  for ax, (name, x) in zip(axes, images.items(), strict=False):
    ax.imshow(show(x), cmap="gray")
    ax.set_title(name, fontsize=9)
  axes[-2].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
  axes[-2].set_title("Grad-CAM", fontsize=9)
  axes[-1].imshow(show(images[overlay_on]), cmap="gray")
  axes[-1].imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
  axes[-1].set_title(f"overlay on {overlay_on}", fontsize=9)
  for ax in axes:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
