"""Data augmentation as pure NumPy functions of (images, rng).

The modalities of a specimen are co-registered, so every random decision
(crop offset, flips, CutMix box and partner) is drawn once and applied to all
of them.
"""

from __future__ import annotations

import numpy as np


def random_crop_flip(
  images: dict[str, np.ndarray],
  rng: np.random.Generator,
  *,
  padding: int = 8,
  hflip: bool = True,
  vflip: bool = True,
) -> dict[str, np.ndarray]:
  """Random crop of the zero-padded image back to its size, then random flips.

  ``images`` maps modality to ``[H, W, C]``; paper: 8-pixel padding and both
  flips (Section III-B).
  """
  h, w = next(iter(images.values())).shape[:2]
  dy, dx = rng.integers(0, 2 * padding + 1, size=2) if padding else (0, 0)
  flip_h = hflip and rng.random() < 0.5
  flip_v = vflip and rng.random() < 0.5
  out = {}
  for name, x in images.items():
    if x.shape[:2] != (h, w):
      raise ValueError(f"modality {name}: size {x.shape[:2]} differs from {(h, w)}")
    if padding:  # == np.pad(x, padding)[dy:dy + h, dx:dx + w], without the padded copy
      sy, sx = dy - padding, dx - padding  # source offset of the crop window
      out_x = np.zeros_like(x)
      out_x[max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)] = x[
        max(0, sy) : h + min(0, sy), max(0, sx) : w + min(0, sx)
      ]
      x = out_x
    if flip_h:
      x = x[:, ::-1]
    if flip_v:
      x = x[::-1]
    out[name] = np.ascontiguousarray(x)
  return out


def cutmix(
  images: dict[str, np.ndarray],
  targets: np.ndarray,
  rng: np.random.Generator,
  *,
  beta: float = 1.0,
  prob: float = 1.0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """CutMix (Yun et al. 2019) on a batch: ``images`` ``{m: [B, H, W, C]}``, ``targets`` ``[B, K]``.

  ``lam ~ Beta(beta, beta)``; a box of area ``(1 - lam) H W`` (clipped at the
  border) from a permuted partner replaces the same box in every modality, and
  the targets mix by the exact pasted area. Applied with probability ``prob``.
  """
  if beta <= 0 or rng.random() >= prob:
    return images, targets
  b, h, w = next(iter(images.values())).shape[:3]
  lam = rng.beta(beta, beta)
  cut = np.sqrt(1.0 - lam)
  ch, cw = int(h * cut), int(w * cut)
  cy, cx = rng.integers(h), rng.integers(w)
  y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
  x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
  perm = rng.permutation(b)
  out = {}
  for name, x in images.items():
    x = x.copy()
    x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
    out[name] = x
  kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  return out, (kept * targets + (1.0 - kept) * targets[perm]).astype(np.float32)
