"""Which part is weak, the recipe, the size or the search? One training recipe, many models.

    python benchmarks/controlled_table.py --search W/search --data-dir W/data_built \\
        --out runs/controlled [--config medmnist] [--seeds 3] [--rows ...] [--reuse W/train]

Trains every row below with the **same** training section of ``--config``
(``dlsjax train``'s code path, ``--seeds`` seeds each: ``config.seed + i``),
then evaluates each on the test split (``dlsjax evaluate``), and prints a
Markdown table of mean ± std over seeds of test binary AUC (two classes;
micro-AUC otherwise) and ACC, with the mean best val AUC the selection saw:

* ``resnet18``: ResNet-18 with the CIFAR stem at the data's resolution
  (``--resnet-width``; MedMNIST's ResNet-18 (28) is width 64);
* ``darts_v2``: DARTS' published cell (NetworkCIFAR, ``--darts-layers`` cells of
  ``--darts-c`` channels, no auxiliary head) -- a known-good NAS cell;
* ``random1..3`` (any ``randomN``): the argmax genotype of random alphas of our
  search space drawn with seed N (``derived_net.random_argmax_network``), the
  same size as a searched one;
* ``argmax``: DARTS' argmax genotype of the search in ``--search``;
* ``mpds``: the MPDS genotype of that search (``genotype.json``); ``--reuse``
  takes an existing training folder of that genotype with the same config
  (e.g. the ``medmnist`` demo's ``W/train``) instead of training it again.

Rows already trained and evaluated in ``--out`` are kept (resumable). Every
choice of the recipe was made on the val split; the test split is only read by
the evaluation here.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import time

ROWS = ("resnet18", "darts_v2", "random1", "random2", "random3", "argmax", "mpds")


def row_config(name: str, base, args):
  """The config of row ``name``: ``base``'s data-fitted model and training section."""
  from dlsjax import models
  from dlsjax.configs import get_config

  cfg = base.copy_and_resolve_references()
  if name == "resnet18":
    models.apply_preset(cfg, "resnet18")
    cfg.model.baselines.resnet18.update(dict(stem="cifar", input_size=0, width=args.resnet_width))
  elif name == "darts_v2":
    d = get_config("darts_cifar_train")
    d.model.modalities, d.model.num_classes = base.model.modalities, base.model.num_classes
    d.model.resolution, d.classes = base.model.resolution, base.classes
    d.model.layers_train, d.model.darts_c_train = args.darts_layers, args.darts_c
    d.train = base.train.copy_and_resolve_references()
    d.seed, d.data = base.seed, base.data
    cfg = d
  return cfg


def genotype_file(name: str, cfg, search: pathlib.Path, out: pathlib.Path) -> pathlib.Path | None:
  from dlsjax import derived_net, genotype

  if name == "resnet18":
    return None
  if name == "darts_v2":
    path = out / "darts_v2.json"
    genotype.PRESET_GENOTYPES["darts_v2"].save(path)
    return path
  if name == "argmax":
    return search / "genotype_argmax.json"
  if name == "mpds":
    return search / "genotype.json"
  seed = int(name.removeprefix("random"))
  spec, choice, _ = derived_net.random_argmax_network(cfg.model, seed=seed)
  path = out / f"{name}.json"
  genotype.Genotype.from_choice(choice, spec.topologies(), spec.op_set).save(path)
  return path


def run_row(name, base, args, out: pathlib.Path) -> dict:
  from dlsjax import evaluate, train

  row_dir = out / name
  done = row_dir / "row.json"
  if done.is_file():
    return json.loads(done.read_text())
  cfg = row_config(name, base, args)
  row_dir.mkdir(parents=True, exist_ok=True)
  t_dir = row_dir / "train"
  t0 = time.perf_counter()
  if name == "mpds" and args.reuse:
    if not (t_dir / "config.json").is_file():
      shutil.copytree(args.reuse, t_dir, dirs_exist_ok=True)
  else:
    geno = genotype_file(name, cfg, pathlib.Path(args.search), row_dir)
    train.train(cfg, geno, args.data_dir, t_dir, runs=args.seeds, resume=True, progress=False)
  train_s = time.perf_counter() - t0
  result = evaluate.evaluate(t_dir, data_dir=args.data_dir, trials=200, throughput_batches=0)
  auc_key = "auc_binary" if "auc_binary" in result["mean"] else "auc_micro"
  val = []
  for r in sorted(t_dir.glob("run*/metrics.jsonl")):
    recs = [json.loads(x) for x in r.read_text().splitlines() if x.strip()]
    if recs and "val_auc" in recs[-1]:
      val.append(max(x["val_auc"] for x in recs))
  record = {
    "row": name,
    "auc_key": auc_key,
    "test_auc": result["mean"][auc_key],
    "test_auc_std": result["mean"][f"{auc_key}_std"],
    "test_acc": result["mean"]["acc"],
    "test_acc_std": result["mean"]["acc_std"],
    "per_seed_auc": [r[auc_key] for r in result["runs"]],
    "per_seed_acc": [r["acc"] for r in result["runs"]],
    "best_val_auc_mean": sum(val) / len(val) if val else None,
    "params_m": result["model"]["params_m"],
    "train_seconds": round(train_s, 1),
    "seeds": len(result["runs"]),
  }
  done.write_text(json.dumps(record, indent=2))
  return record


def table(records) -> str:
  lines = [
    "| model | params (M) | test AUC | test ACC | best val AUC (mean) | train s |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for r in records:
    val = f"{r['best_val_auc_mean']:.3f}" if r["best_val_auc_mean"] is not None else "–"
    lines.append(
      f"| {r['row']} | {r['params_m']:.3g} | {r['test_auc']:.3f} ± {r['test_auc_std']:.3f} | "
      f"{r['test_acc']:.3f} ± {r['test_acc_std']:.3f} | {val} | {r['train_seconds']:.0f} |"
    )
  key = records[0]["auc_key"] if records else "auc"
  lines += ["", f"AUC = {key}; mean ± std over {records[0]['seeds'] if records else 0} seeds."]
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--search", required=True, help="a finished search folder (MPDS derived)")
  ap.add_argument("--data-dir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--config", default="medmnist")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--rows", default=",".join(ROWS))
  ap.add_argument("--reuse", help="an existing training folder of the MPDS genotype")
  ap.add_argument("--resnet-width", type=int, default=64, help="MedMNIST's ResNet-18: 64")
  ap.add_argument("--darts-layers", type=int, default=8)
  ap.add_argument("--darts-c", type=int, default=16)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)

  from dlsjax.configs import get_config
  from dlsjax.data import dataset
  from dlsjax.data.fit import fit_config

  base = fit_config(get_config(args.config), dataset.load(args.data_dir))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  records = []
  names = [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = [n for n in names if n not in ROWS and not (n[:6] == "random" and n[6:].isdigit())]
  if unknown:
    raise SystemExit(f"--rows: unknown rows {unknown}; rows: {ROWS} or randomN")
  for name in names:
    rec = run_row(name, base, args, out)
    records.append(rec)
    print(json.dumps(rec), flush=True)
  text = table(records)
  (out / "table.md").write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
