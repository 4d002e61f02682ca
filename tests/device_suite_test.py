"""``benchmarks/device_suite.sh`` dry-run on the CPU (tiny sizes), so the GPU script cannot rot."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_device_suite_dry_run_measures_every_item(tmp_path):
  env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a one-GPU machine
  out = subprocess.run(
    ["bash", "benchmarks/device_suite.sh", str(tmp_path)],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  by = {r["suite"]: r for r in rows}
  log = (tmp_path / "suite.log").read_text()
  for name in ("search_step_f32", "search_step_bf16", "search_step_seeds", "canonical_first_order",
               "canonical_second_order", "inference_f32", "inference_bf16",
               "mpds_vmapped_vs_loop"):  # fmt: skip
    assert name in by and "error" not in by[name], (name, log[-3000:])
    assert by[name]["card"] == "cpu" and by[name]["dry_run"] is True
  assert by["search_step_bf16"]["images_per_s"] > 0 and by["inference_bf16"]["dtype"] == "bfloat16"
  paper = by["paper_search_f32"]
  assert paper["extrapolated"] is True and paper["steps"] == 1450 and paper["minutes"] > 0
  assert by["search_step_seeds"]["seeds"] == 2 and by["seeds_vs_one"]["wall_ratio"] > 0
  assert "torch_reference" in by  # measured, or an error line saying torch is missing
