import json
import subprocess
import sys

import pytest

from dlsjax import genotype, main


def run_cli(capsys, *args):
  assert main.main(list(args)) == 0
  return capsys.readouterr().out


def test_describe_darts_v2_json(capsys):
  out = json.loads(run_cli(capsys, "describe", "--preset", "darts_v2", "--json", "--no-compile"))
  assert out["params"] == 3_349_342
  assert out["input_shape"] == {"image": [32, 32, 3]}
  # DARTS reports ~0.53 G multiply-adds; XLA counts 2 FLOPs each, plus BN/ReLU/adds.
  assert 1.0e9 < out["flops_per_image"] < 1.2e9
  assert out["hlo_lines"] > 0


def test_describe_search_spaces_json(capsys):
  quick = ("--json", "--structure-only")
  out = json.loads(run_cli(capsys, "describe", "--search-space", "darts_cifar", *quick))
  assert out["alphas"] == 2 * 14 * 8
  assert out["params"] == 1_930_618  # the DARTS search network's count (padding slots excluded)
  assert out["parts"]["normal"]["edges"] == 14
  assert "hlo_lines" not in out and "flops_per_image" not in out
  out = json.loads(run_cli(capsys, "describe", "--search-space", "paper", *quick))
  assert out["alphas"] == (7 + 5 + 9 + 9) * 10
  assert out["input_shape"] == {"WL": [64, 64, 3], "NIR1": [64, 64, 3], "NIR2": [64, 64, 3]}
  assert out["cells"] == ["reduce", "normal"] * 3
  # The lowered facts, on a small paper-structured search space.
  small = ["model.c_sin_search=4", "model.resolution=8", "model.k_r=1",
           "model.op_set=none,skip_connect,sep_conv_3x3"]  # fmt: skip
  sets = [f"--config.{s}" for s in small]
  out = json.loads(
    run_cli(capsys, "describe", "--search-space", "paper", "--json", "--no-compile", *sets)
  )
  assert out["hlo_lines"] > 0 and out["flops_per_image"] > 0 and "compile_s" not in out
  assert out["cells"] == ["reduce", "normal"]


def test_describe_genotype_file_and_table(capsys, tmp_path):
  from conftest import tiny_spec
  from genotype_test import random_choice

  spec = tiny_spec()
  g = genotype.Genotype.from_choice(random_choice(spec), spec.topologies(), spec.op_set)
  path = tmp_path / "g.json"
  g.save(path)
  sets = [
    "--config.model.c_sin_train=4",
    "--config.model.resolution=8",
    "--config.model.k_r=1",
    "--config.model.op_set=" + ",".join(spec.op_set),
  ]
  out = run_cli(capsys, "describe", "--genotype", str(path), "--config", "paper_train", *sets)
  assert "params" in out and "flops_per_image" in out and "compile_s" in out
  with pytest.raises(SystemExit, match="no such field"):
    main.main(["describe", "--genotype", str(path), "--config.model.nope=1"])
  with pytest.raises(SystemExit, match="--config.model.k_r=three"):
    main.main(["describe", "--genotype", str(path), "--config.model.k_r=three"])
  path.write_text("{}")
  with pytest.raises(SystemExit, match="missing field 'op_set'"):
    main.main(["describe", "--genotype", str(path), *sets])


def test_console_script_help():
  r = subprocess.run(
    [sys.executable, "-m", "dlsjax.main", "describe", "--help"],
    capture_output=True,
    text=True,
    check=True,
  )
  assert "--search-space" in r.stdout


def test_data_commands(capsys, tmp_path):
  run_cli(
    capsys, "data", "synth", "--out", str(tmp_path / "f"), "--specimens", "12", "--patients", "3"
  )
  run_cli(
    capsys,
    "data",
    "synth",
    "--out",
    str(tmp_path / "g"),
    "--specimens",
    "12",
    "--patients",
    "4",
    "--size",
    "32",
  )
  out = run_cli(
    capsys, "data", "build", "--manual-dir", str(tmp_path / "g"), "--data-dir", str(tmp_path / "b"),
    "--config.model.resolution=16", "--config.data.test_patients=1",
  )  # fmt: skip
  assert "dlsjax_synthetic" in out and "16x16" in out
  info = run_cli(capsys, "data", "info", "--data-dir", str(tmp_path / "b"))
  assert "train" in info and "test" in info and "NIR2 (1 ch, fluorescence)" in info
  assert len(list((tmp_path / "f").iterdir())) == 12 + 2
  # Errors name the problem and exit non-zero.
  with pytest.raises(SystemExit, match=r"data build: .*dataset.json: not found"):
    main.main(["data", "build", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path / "x")])
  with pytest.raises(SystemExit, match=r"data build: .*exists and is not empty"):
    main.main(
      ["data", "build", "--manual-dir", str(tmp_path / "g"), "--data-dir", str(tmp_path / "b"),
       "--config.data.test_patients=1"]
    )  # fmt: skip
  with pytest.raises(SystemExit, match=r"--config.data.nope: no such field in paper"):
    main.main(["data", "build", "--manual-dir", "g", "--data-dir", "b", "--config.data.nope=1"])


def test_invalid_model_config_is_a_clear_error():
  with pytest.raises(SystemExit, match="model.resolution 28 is not divisible by 2\\^3"):
    main.main(
      ["describe", "--search-space", "paper", "--structure-only", "--config.model.resolution=28"]
    )
  with pytest.raises(SystemExit, match="'paper_train' has no search section"):
    main.main(["describe", "--search-space", "paper_train", "--structure-only"])
  out = main.main(["describe", "--search-space", "paper:tiny", "--structure-only", "--json"])
  assert out == 0  # any search config's spec names a search space
