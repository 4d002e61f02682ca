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


def test_one_config_path_for_every_command(tmp_path):
  """``--config SPEC --config.KEY=VALUE``: the flags, the values' types, a config file."""
  from dlsjax import configs

  argv = ["search", "--config", "paper:tiny", "--config.search.epochs=3", "--data-dir", "d",
          "--config.model.op_set", "none,skip_connect", "--config.seed=2"]  # fmt: skip
  rest, pairs = configs.split_flags(argv)
  assert rest == ["search", "--config", "paper:tiny", "--data-dir", "d"]
  assert pairs == [("search.epochs", "3"), ("model.op_set", "none,skip_connect"), ("seed", "2")]
  cfg = configs.load("paper:tiny", pairs)
  assert (cfg.search.epochs, cfg.model.op_set, cfg.seed) == (3, "none,skip_connect", 2)
  # Typed by the field: a string field keeps the text, a number parses, booleans read true/false.
  cfg = configs.load("paper", ["model.layout=123", "search.w_lr=0.5", "search.hflip=false"])
  assert cfg.model.layout == "123" and cfg.search.w_lr == 0.5 and cfg.search.hflip is False
  with pytest.raises(configs.ConfigError, match=r"--config.search.alpha_lrr: no such field in "
                     r"paper \(did you mean --config.search.alpha_lr\?\)"):  # fmt: skip
    configs.load("paper", ["search.alpha_lrr=1"])
  with pytest.raises(configs.ConfigError, match="--config.search.epochs=many"):
    configs.load("paper", ["search.epochs=many"])
  with pytest.raises(configs.ConfigError, match="no value"):
    configs.split_flags(["--config.seed"])
  with pytest.raises(configs.ConfigError, match=r"did you mean demo\?"):
    configs.get_config("demoo")
  # A config file as ml_collections' config_flags read one: get_config(arg) in any .py file.
  path = tmp_path / "mine.py"
  path.write_text(
    "from dlsjax.configs import get_config as named\n"
    "def get_config(arg=None):\n"
    "  c = named('paper:tiny')\n"
    "  c.search.epochs = int(arg or 5)\n"
    "  return c\n"
  )
  assert configs.load(str(path)).search.epochs == 5
  assert configs.load(f"{path}:7", ["seed=4"]).search.epochs == 7
  with pytest.raises(configs.ConfigError, match="no such config file"):
    configs.get_config(str(tmp_path / "nope.py"))
  # A file that invents a key is refused like a typo on the command line.
  path.write_text(
    "from dlsjax.configs import get_config as named\n"
    "def get_config(arg=None):\n"
    "  c = named('paper')\n"
    "  c.search.epoch = 3\n"
    "  return c\n"
  )
  with pytest.raises(configs.ConfigError, match=r"search.epoch \(did you mean search.epochs"):
    configs.load(str(path))
  # A model of models.py is a variant of every config with a model section.
  assert configs.get_config("experiment:tiny,resnet18").model.arch == "resnet18"
  assert configs.get_config("medmnist:pyramidnet_shakedrop").model.arch == "pyramidnet_shakedrop"
  with pytest.raises(configs.ConfigError, match="more than one variant"):
    configs.get_config("medmnist:tiny,full")


def test_the_cli_routes_every_override_through_that_path(tmp_path):
  from dlsjax import main

  # derive reads the search's config: only derive.* fields, typed by the option's default.
  from dlsjax.derive import parse_overrides

  assert parse_overrides([("derive.method", "pt"), ("derive.pt_tune_epochs", "2")]) == {
    "method": "pt", "pt_tune_epochs": 2
  }  # fmt: skip
  with pytest.raises(SystemExit, match="only derive.\\* fields"):
    main.main(["derive", "--workdir", str(tmp_path), "--config.search.epochs=2"])
  with pytest.raises(SystemExit, match=r"--config.derive.methd: no such field in derive \(did you "
                     r"mean --config.derive.method"):  # fmt: skip
    main.main(["derive", "--workdir", str(tmp_path), "--config.derive.methd=pt"])
  # Commands that read a finished run's config take none.
  with pytest.raises(SystemExit, match=r"dlsjax evaluate: takes no config \(--config.seed given"):
    main.main(["evaluate", "--workdir", str(tmp_path), "--config.seed=1"])
  with pytest.raises(SystemExit, match=r"dlsjax data synth: takes no config"):
    main.main(["data", "synth", "--out", str(tmp_path / "s"), "--config.seed=1"])
  # A typo in a search's override stops before any data is read.
  with pytest.raises(SystemExit, match=r"dlsjax search: --config.search.epoch: no such field"):
    main.main(["search", "--data-dir", "nope", "--workdir", str(tmp_path / "w"),
               "--config.search.epoch=1"])  # fmt: skip
