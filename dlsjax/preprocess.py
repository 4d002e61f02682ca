"""Image preprocessing of the paper (Section III-A), as pure NumPy functions.

In the paper's order, for fluorescence images: non-linear normalisation of the
raw intensities, auto-contrast, low-pass filtering in the frequency domain,
resize to the model resolution, 0-1 normalisation; fluorescence duplicated to
3 channels where a config asks for the paper's 3-channel inputs. White-light
images are resized and 0-1 normalised.

All functions take and return ``float32`` arrays ``[H, W]`` or ``[H, W, C]``
and never modify their input. Values that are NaN or infinite are rejected
with :class:`PreprocessError`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

NONLINEAR = ("log", "gamma", "none")


class PreprocessError(ValueError):
  """An image that cannot be preprocessed (NaN/Inf, wrong rank, empty)."""


def _check(img: np.ndarray, name: str = "image") -> np.ndarray:
  img = np.asarray(img)
  if img.ndim not in (2, 3) or img.size == 0:
    raise PreprocessError(f"{name}: expected [H, W] or [H, W, C], got shape {img.shape}")
  img = img.astype(np.float32)
  if not np.all(np.isfinite(img)):
    raise PreprocessError(f"{name}: contains NaN or Inf values")
  return img


def _per_channel(fn, img: np.ndarray) -> np.ndarray:
  if img.ndim == 2:
    return fn(img)
  return np.stack([fn(img[..., c]) for c in range(img.shape[-1])], axis=-1)


def minmax01(img: np.ndarray) -> np.ndarray:
  """0-1 normalisation per channel; a constant channel becomes 0."""
  img = _check(img)

  def one(x):
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)

  return _per_channel(one, img).astype(np.float32)


def nonlinear_normalize(img: np.ndarray, method: str = "log", gamma: float = 0.5) -> np.ndarray:
  """Compress raw fluorescence intensities (any range, e.g. 16-bit) to [0, 1].

  The paper does not name its function. ``log`` (default):
  ``log1p(x - min) / log1p(max - min)``, which spreads the dim tissue signal
  of a heavy-tailed intensity distribution; ``gamma``:
  ``((x - min) / (max - min)) ** gamma``; ``none``: min-max only.
  """
  if method not in NONLINEAR:
    raise PreprocessError(f"nonlinear method must be one of {NONLINEAR}, got {method!r}")
  img = _check(img)

  def one(x):
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
      return np.zeros_like(x)
    if method == "log":
      return np.log1p(x - lo) / np.log1p(hi - lo)
    y = (x - lo) / (hi - lo)
    return y**gamma if method == "gamma" else y

  return _per_channel(one, img).astype(np.float32)


def auto_contrast(img: np.ndarray, saturated: float = 0.35) -> np.ndarray:
  """ImageJ-style contrast stretch saturating ``saturated`` percent of the pixels.

  As ImageJ's *Enhance Contrast* (``saturated=0.35``): half of the
  saturation at each end of the histogram, i.e. the values below the
  0.175th and above the 99.825th percentile are clipped, and the rest is
  stretched linearly to [0, 1]. Per channel.
  """
  if not 0.0 <= saturated < 100.0:
    raise PreprocessError(f"saturated must be in [0, 100), got {saturated}")
  img = _check(img)

  def one(x):
    lo, hi = np.percentile(x, [saturated / 2, 100.0 - saturated / 2])
    if hi <= lo:
      return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)

  return _per_channel(one, img).astype(np.float32)


def lowpass_fft(img: np.ndarray, fraction: float = 0.5) -> np.ndarray:
  """Ideal low-pass filter in the frequency domain.

  Keeps the centred block of the (shifted) spectrum whose height and width
  are ``fraction`` of the image's (paper: half the width and height), zeroes
  the rest and returns the real part of the inverse transform. Per channel.
  """
  if not 0.0 < fraction <= 1.0:
    raise PreprocessError(f"fraction must be in (0, 1], got {fraction}")
  img = _check(img)

  def one(x):
    h, w = x.shape
    spec = np.fft.fftshift(np.fft.fft2(x))
    kh, kw = max(1, round(h * fraction)), max(1, round(w * fraction))
    mask = np.zeros((h, w), bool)
    top, left = h // 2 - kh // 2, w // 2 - kw // 2
    mask[top : top + kh, left : left + kw] = True
    return np.real(np.fft.ifft2(np.fft.ifftshift(spec * mask)))

  return _per_channel(one, img).astype(np.float32)


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize (antialiased when shrinking: PIL's triangle filter) to ``size x size``.

  Per channel in float32 (PIL mode ``F``), so no precision is lost and data
  loader workers need no JAX.
  """
  img = _check(img)

  def one(x):
    if x.shape == (size, size):
      return x
    return np.asarray(
      Image.fromarray(np.ascontiguousarray(x, np.float32)).resize((size, size), Image.BILINEAR)
    )

  return _per_channel(one, img).astype(np.float32)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
  """Duplicate a single-channel image to ``channels`` channels (paper: 3)."""
  img = _check(img)
  if img.ndim == 3 and img.shape[-1] == channels:
    return img
  if img.ndim == 3 and img.shape[-1] != 1:
    raise PreprocessError(f"cannot duplicate a {img.shape[-1]}-channel image to {channels}")
  base = img if img.ndim == 2 else img[..., 0]
  return np.repeat(base[..., None], channels, axis=-1)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Preprocessing of one modality. Defaults follow the paper for fluorescence images."""

  fluorescence: bool = True
  nonlinear: str = "log"
  gamma: float = 0.5
  saturated: float = 0.35
  lowpass_fraction: float | None = 0.5  # None: no low-pass filtering
  resolution: int = 64
  channels: int = 3


def preprocess(img: np.ndarray, cfg: PreprocessConfig, name: str = "image") -> np.ndarray:
  """The paper's chain; returns float32 ``[resolution, resolution, channels]`` in [0, 1]."""
  try:
    x = _check(img, name)
    if cfg.fluorescence:
      x = nonlinear_normalize(x, cfg.nonlinear, cfg.gamma)
      x = auto_contrast(x, cfg.saturated)
      if cfg.lowpass_fraction is not None:
        x = lowpass_fft(x, cfg.lowpass_fraction)
    x = resize(x, cfg.resolution)
    x = minmax01(x)
    return to_channels(x, cfg.channels)
  except PreprocessError as e:
    msg = str(e)
    raise PreprocessError(msg if msg.startswith(name) else f"{name}: {msg}") from None
