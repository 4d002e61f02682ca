"""Named configs: one name for small variants, and unknown keys rejected with the key named."""

import pytest

from dlsjax import parts, search, train
from dlsjax.configs import VARIANTS, check_keys, get_config


def test_every_named_config_and_variant_passes_the_key_check():
  for name, variants in VARIANTS.items():
    for arg in variants:
      check_keys(get_config(name, arg), f"{name}:{arg}")
  assert get_config("paper:tiny").search.epochs == 1  # `tiny` is every small variant's name
  with pytest.raises(ValueError, match="unknown variant 'runlocal'"):
    get_config("paper", "runlocal")


def test_a_typo_is_rejected_with_the_key_and_a_suggestion(tmp_path):
  cfg = get_config("paper")
  cfg.search.alpha_lrr = 0.1
  with pytest.raises(ValueError, match=r"search.alpha_lrr \(did you mean search.alpha_lr\?\)"):
    check_keys(cfg)
  # The jobs check before touching data or devices.
  with pytest.raises(search.SearchError, match="search.alpha_lrr"):
    search.search(cfg, tmp_path / "no_data", tmp_path / "w", progress=False)
  cfg = get_config("paper_train")
  cfg.train.epoch = 3
  with pytest.raises(train.TrainError, match=r"train.epoch \(did you mean train.epochs\?\)"):
    train.train(cfg, None, tmp_path / "no_data", tmp_path / "t", progress=False)


def test_a_registered_stem_field_is_a_known_key():
  cfg = get_config("paper")
  cfg.model.polar_stem = "learnable"
  with pytest.raises(ValueError, match="model.polar_stem"):
    check_keys(cfg)
  parts.register_stem("polar", inputs=lambda m: False, feeds="s0")
  try:
    check_keys(cfg)
  finally:
    parts.unregister("polar")
