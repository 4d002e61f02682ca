"""The synthetic default dataset: specimen-like WL + NIR-I + NIR-II images of 4 grades.

Not real tissue, but built to exercise what the real task needs:

* Every specimen is a tissue blob on a background. Grades follow the paper's
  class imbalance (I/II/III/IV = 27/43/20/9 %); each patient has a dominant
  grade and a mixture of others, and patient-specific ambient light and tint.
* The grade is spread over the modalities so that no single one carries all
  of it: write grade = 2*a + b. NIR-I carries ``a`` in the spatial scale of
  the tissue's fluorescence texture (coarse for I/II, fine for III/IV); NIR-II
  carries ``b`` in the number of bright foci (few for I/III, many for II/IV);
  WL carries a noisy hint of ``a`` (density of dark vessel-like streaks).
* Each image is rescaled to a random mean intensity drawn independently of the
  grade, so mean brightness alone does not separate the grades.
* NIR-I and NIR-II differ in blur (NIR-I scatters more), ambient offset and
  noise; both are 16-bit PNGs, WL an 8-bit RGB PNG.
"""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
from PIL import Image

from dlsjax.data import folder

PAPER_CLASS_PRIOR = (0.27, 0.43, 0.20, 0.09)  # grades I-IV, paper Section III-A
CLASSES = ("I", "II", "III", "IV")
MODALITIES = (
  {"name": "WL", "channels": 3, "fluorescence": False},
  {"name": "NIR1", "channels": 1, "fluorescence": True},
  {"name": "NIR2", "channels": 1, "fluorescence": True},
)


def band_noise(rng: np.random.Generator, size: int, lo: float, hi: float) -> np.ndarray:
  """Zero-mean, unit-std noise with spatial frequencies in [lo, hi] cycles per image."""
  f = np.fft.fftfreq(size) * size
  radius = np.hypot(f[:, None], f[None, :])
  spec = np.fft.fft2(rng.normal(size=(size, size))) * ((radius >= lo) & (radius <= hi))
  x = np.real(np.fft.ifft2(spec))
  return (x - x.mean()) / (x.std() + 1e-8)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
  if sigma <= 0:
    return x
  f = np.fft.fftfreq(x.shape[0])[:, None] ** 2 + np.fft.fftfreq(x.shape[1])[None, :] ** 2
  kernel = np.exp(-2 * (np.pi * sigma) ** 2 * f)
  if x.ndim == 3:
    kernel = kernel[..., None]
  return np.real(np.fft.ifft2(np.fft.fft2(x, axes=(0, 1)) * kernel, axes=(0, 1)))


def tissue_mask(rng: np.random.Generator, size: int) -> np.ndarray:
  """A soft blob with an irregular border, values in [0, 1]."""
  yy, xx = (np.mgrid[:size, :size] + 0.5) / size
  cy, cx = rng.uniform(0.35, 0.65, 2)
  ry, rx = rng.uniform(0.22, 0.38, 2)
  theta = rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
  v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
  r = np.hypot(u, v) + 0.25 * band_noise(rng, size, 1, 3)
  return np.clip((1.15 - r) / 0.3, 0.0, 1.0)


def _rescale_mean(x: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
  return x * (rng.uniform(lo, hi) / x.mean())


def specimen_images(
  rng: np.random.Generator, grade: int, patient: dict, size: int = 96
) -> dict[str, np.ndarray]:
  """One specimen's ``WL`` (uint8 RGB), ``NIR1`` and ``NIR2`` (uint16)."""
  a, b = grade // 2, grade % 2
  mask = tissue_mask(rng, size)

  # NIR-I: texture scale carries a (coarse for I/II, fine for III/IV); strong scatter blur.
  band = (1.5, 4.0) if a == 0 else (6.0, 12.0)
  tex = band_noise(rng, size, *band)
  px = size / 96  # blur and spot sizes are given for 96-pixel images
  nir1 = mask * (1.0 + 0.8 * tex).clip(0.05)
  nir1 = gaussian_blur(nir1, rng.uniform(0.6, 1.0) * px)
  nir1 = nir1 + patient["ambient1"] * rng.uniform(0.7, 1.3) + 0.04 * rng.normal(size=nir1.shape)
  nir1 = _rescale_mean(nir1.clip(1e-3), rng, 1500.0, 9000.0)

  # NIR-II: number of bright foci carries b (few for I/III, many for II/IV); sharper.
  n_foci = rng.integers(0, 2) if b == 0 else rng.integers(6, 11)
  nir2 = mask * (0.5 + 0.05 * band_noise(rng, size, 2.0, 6.0)).clip(0.05)
  ys, xs = np.nonzero(mask > 0.7)
  yy, xx = np.mgrid[:size, :size]
  for _ in range(n_foci):
    k = rng.integers(len(ys))
    s = rng.uniform(3.0, 4.5) * px
    nir2 = nir2 + rng.uniform(1.5, 3.0) * np.exp(
      -((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2) / (2 * s * s)
    )
  nir2 = gaussian_blur(nir2, rng.uniform(0.3, 0.6) * px)
  nir2 = nir2 + patient["ambient2"] * rng.uniform(0.7, 1.3) + 0.03 * rng.normal(size=nir2.shape)
  nir2 = _rescale_mean(nir2.clip(1e-3), rng, 1500.0, 9000.0)

  # WL: pink tissue on a dark drape; vessel-like streak density is a noisy hint of a.
  tissue_rgb = np.array([0.85, 0.55, 0.55]) * patient["tint"]
  drape = np.array([0.15, 0.3, 0.25])
  colour = 0.08 * np.stack([band_noise(rng, size, 2, 10) for _ in range(3)], -1)
  wl = mask[..., None] * tissue_rgb + (1 - mask[..., None]) * drape + colour
  n_streaks = rng.poisson(2.0 + 3.0 * a)
  for _ in range(n_streaks):
    y0, x0 = rng.uniform(0.2, 0.8, 2) * size
    ang = rng.uniform(0, np.pi)
    dist = np.abs((xx - x0) * np.sin(ang) - (yy - y0) * np.cos(ang))
    wl = wl - 0.25 * (mask * np.exp(-(dist**2) / 2.0))[..., None] * np.array([0.2, 1.0, 1.0])
  wl = gaussian_blur(wl, 0.6 * px) + 0.02 * rng.normal(size=wl.shape)
  wl = _rescale_mean(wl.clip(0.0), rng, 0.3, 0.5)

  return {
    "WL": (wl.clip(0, 1) * 255).round().astype(np.uint8),
    "NIR1": nir1.clip(0, 65535).round().astype(np.uint16),
    "NIR2": nir2.clip(0, 65535).round().astype(np.uint16),
  }


def synthesize(
  out: str | pathlib.Path,
  *,
  specimens: int = 240,
  patients: int = 24,
  seed: int = 0,
  size: int = 96,
  dominant: float = 0.65,
  progress: bool = False,
) -> dict:
  """Write the synthetic dataset folder to ``out``; returns ``dataset.json``'s contents."""
  out = pathlib.Path(out)
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"{out}: exists and is not empty")
  if not 1 <= patients <= specimens:
    raise ValueError(f"need 1 <= patients <= specimens, got {patients} and {specimens}")
  with folder.staging_dir(out) as tmp:
    return _write(tmp, specimens, patients, seed, size, dominant, progress)


def _write(out, specimens, patients, seed, size, dominant, progress) -> dict:
  rng = np.random.default_rng(seed)
  prior = np.asarray(PAPER_CLASS_PRIOR) / sum(PAPER_CLASS_PRIOR)
  pats = [
    {
      "id": f"P{p + 1:02d}",
      "grade": int(rng.choice(4, p=prior)),
      "ambient1": rng.uniform(0.05, 0.25),
      "ambient2": rng.uniform(0.0, 0.12),
      "tint": rng.uniform(0.9, 1.1, 3),
    }
    for p in range(patients)
  ]
  owner = np.concatenate([np.arange(patients), rng.integers(0, patients, specimens - patients)])
  rng.shuffle(owner)
  desc = {"name": "dlsjax_synthetic", "modalities": list(MODALITIES), "classes": list(CLASSES)}
  (out / "dataset.json").write_text(json.dumps(desc, indent=2))
  rows = []
  items = range(specimens)
  if progress:
    from tqdm import tqdm

    items = tqdm(items, desc="synthesising specimens", unit="specimen")
  for i in items:
    pat = pats[owner[i]]
    grade = pat["grade"] if rng.random() < dominant else int(rng.choice(4, p=prior))
    sid = f"S{i + 1:04d}"
    (out / sid).mkdir()
    for name, img in specimen_images(rng, grade, pat, size).items():
      Image.fromarray(img).save(out / sid / f"{name}.png", compress_level=1)
    rows.append((sid, pat["id"], CLASSES[grade]))
  with (out / "manifest.csv").open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["specimen_id", "patient_id", "label"])
    w.writerows(rows)
  return desc
