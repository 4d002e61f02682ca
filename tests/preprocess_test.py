import numpy as np
import pytest

from dlsjax import preprocess as pp


def raw16(seed=0, shape=(40, 48)):
  rng = np.random.default_rng(seed)
  return (rng.lognormal(6.0, 1.0, shape)).clip(0, 65535).astype(np.uint16)


def test_nonlinear_normalize_log_and_gamma():
  x = raw16()
  for method in ("log", "gamma", "none"):
    y = pp.nonlinear_normalize(x, method)
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == pytest.approx(1.0)
    # Monotonic: the order of pixel intensities is kept.
    order = np.argsort(x, axis=None, kind="stable")
    assert np.all(np.diff(y.ravel()[order]) >= -1e-7)
  # log and gamma lift the dim part of a heavy-tailed distribution above linear scaling.
  lin, log = pp.nonlinear_normalize(x, "none"), pp.nonlinear_normalize(x, "log")
  assert np.median(log) > 2 * np.median(lin)
  np.testing.assert_allclose(pp.nonlinear_normalize(x, "gamma", gamma=1.0), lin, atol=1e-6)
  with pytest.raises(pp.PreprocessError, match="nonlinear method"):
    pp.nonlinear_normalize(x, "sqrt")


def test_auto_contrast_saturates_035_percent():
  x = np.random.default_rng(1).normal(size=(200, 200)).astype(np.float32)
  y = pp.auto_contrast(x, 0.35)
  saturated = np.mean((y <= 0.0) | (y >= 1.0)) * 100
  assert 0.30 <= saturated <= 0.45
  assert y.min() == 0.0 and y.max() == 1.0
  # An offset (ambient light) and a gain do not change the result.
  np.testing.assert_allclose(pp.auto_contrast(3.0 * x + 100.0), y, atol=1e-5)


def test_lowpass_keeps_low_and_removes_high_frequencies():
  h = w = 32
  yy, xx = np.mgrid[:h, :w]
  low = np.cos(2 * np.pi * xx / w)  # frequency 1
  high = np.cos(np.pi * xx) * np.cos(np.pi * yy)  # checkerboard, Nyquist
  np.testing.assert_allclose(pp.lowpass_fft(low + high, 0.5), low, atol=1e-5)
  const = np.full((h, w), 3.0)
  np.testing.assert_allclose(pp.lowpass_fft(const), const, atol=1e-5)
  # Frequency h/4 + 1 lies outside the central half-size block.
  mid = np.cos(2 * np.pi * (h // 4 + 1) * xx / w)
  assert np.abs(pp.lowpass_fft(mid, 0.5)).max() < 1e-5


def test_resize_minmax_and_channels():
  x = np.random.default_rng(2).random((100, 80, 3)).astype(np.float32)
  y = pp.resize(x, 64)
  assert y.shape == (64, 64, 3)
  np.testing.assert_allclose(pp.resize(np.full((50, 70), 0.25), 64), 0.25, atol=1e-6)
  z = pp.minmax01(x * 5 + 2)
  assert z.min() == 0.0 and z.max() == pytest.approx(1.0)
  assert pp.minmax01(np.ones((4, 4))).max() == 0.0
  g = pp.to_channels(np.ones((8, 8)), 3)
  assert g.shape == (8, 8, 3)
  with pytest.raises(pp.PreprocessError, match="cannot duplicate"):
    pp.to_channels(np.ones((8, 8, 2)), 3)


def test_paper_chain_and_bad_input():
  cfg = pp.PreprocessConfig()
  y = pp.preprocess(raw16(shape=(90, 120)), cfg, name="S001/NIR1.png")
  assert y.shape == (64, 64, 3) and y.dtype == np.float32
  assert y.min() == 0.0 and y.max() == pytest.approx(1.0)
  np.testing.assert_array_equal(y[..., 0], y[..., 2])
  wl = pp.preprocess(
    np.random.default_rng(3).random((90, 120, 3)), pp.PreprocessConfig(fluorescence=False)
  )
  assert wl.shape == (64, 64, 3) and not np.allclose(wl[..., 0], wl[..., 1])
  bad = np.ones((10, 10), np.float32)
  bad[3, 3] = np.nan
  with pytest.raises(pp.PreprocessError, match="S002/NIR2.tif: contains NaN or Inf"):
    pp.preprocess(bad, cfg, name="S002/NIR2.tif")
  with pytest.raises(pp.PreprocessError, match="expected"):
    pp.preprocess(np.ones((2, 3, 4, 5)), cfg)
