"""The ``dlsjax`` command line. Parses flags only; the work lives in importable modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import sys

SEARCH_SPACES = ("paper", "darts_cifar")  # the two search spaces `describe --help` names


def load_config(spec: str, args) -> object:
  """``--config SPEC`` with the command line's ``--config.KEY=VALUE`` flags (configs.load)."""
  from dlsjax import configs

  try:
    return configs.load(spec, args.config_overrides)
  except ValueError as e:
    raise SystemExit(f"dlsjax {args.command}: {e}") from None


def cmd_describe(args) -> int:
  from dlsjax import describe, genotype, netspec

  if sum(x is not None for x in (args.preset, args.search_space, args.genotype)) != 1:
    raise SystemExit("describe: give exactly one of --preset, --search-space, --genotype")
  if args.preset is not None:
    if args.preset not in genotype.PRESET_GENOTYPES:
      raise SystemExit(
        f"describe: unknown preset {args.preset!r}; available: {sorted(genotype.PRESET_GENOTYPES)}"
      )
    cfg = load_config("darts_cifar_train", args)
    spec = netspec.spec_from_config(cfg.model, phase="train")
    g = genotype.PRESET_GENOTYPES[args.preset]
    out = describe.describe_derived(
      spec,
      g.to_choice(spec.topologies(), spec.op_set),
      aux_head=cfg.train.aux_head,
      compile_=not args.no_compile,
    )
    out = {"name": args.preset, **out}
  elif args.search_space is not None:
    cfg = load_config(args.search_space, args)
    if "search" not in cfg:
      raise SystemExit(
        f"describe: {args.search_space!r} has no search section; search spaces: "
        f"{', '.join(SEARCH_SPACES)} (or any search config: demo, medmnist, a file)"
      )
    spec = netspec.spec_from_config(cfg.model, phase="search")
    out = {
      "name": args.search_space,
      **describe.describe_search_space(
        spec, compile_=not args.no_compile, lower=not args.structure_only
      ),
    }
  else:
    cfg = load_config(args.config or "paper_train", args)
    spec = netspec.spec_from_config(cfg.model, phase="train")
    try:
      g = genotype.Genotype.load(args.genotype)
      choice = g.to_choice(spec.topologies(), spec.op_set)
    except (OSError, genotype.GenotypeError) as e:
      raise SystemExit(f"describe: {e}") from None
    aux = bool(cfg.get("train", {}).get("aux_head", False))
    out = {
      "name": str(args.genotype),
      **describe.describe_derived(spec, choice, aux_head=aux, compile_=not args.no_compile),
    }
  print(json.dumps(out) if args.json else describe.format_table(out))
  return 0


def build_data(args, opts) -> None:
  """``data build``: a remote --manual-dir is downloaded, a remote --data-dir published whole."""
  import tempfile

  from dlsjax import paths
  from dlsjax.data import builder

  manual = paths.local(args.manual_dir, "--manual-dir")
  if not paths.is_remote(args.data_dir):
    builder.build(manual, args.data_dir, opts, overwrite=args.overwrite)
    return
  dest = paths.resolve(args.data_dir)
  if dest.exists() and not args.overwrite:
    raise FileExistsError(f"--data-dir {args.data_dir} exists (pass --overwrite to replace it)")
  paths.staging_root().mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=paths.staging_root()) as tmp:
    built = pathlib.Path(tmp) / "built"
    builder.build(manual, built, opts)
    paths.publish_tree(built, args.data_dir, "--data-dir")


def cmd_data(args) -> int:
  from dlsjax.data import builder, dataset, folder, npz, synth

  try:
    if args.data_command == "synth":
      synth.synthesize(
        args.out, specimens=args.specimens, patients=args.patients, seed=args.seed,
        size=args.size, progress=True,
      )  # fmt: skip
      print(f"wrote {args.specimens} specimens of {args.patients} patients to {args.out}")
    elif args.data_command == "from-npz":
      classes = args.classes.split(",") if args.classes else None
      d = npz.from_npz(
        args.npz, args.out, modality=args.modality, classes=classes, name=args.name,
        val_fraction=args.val_fraction, val_seed=args.val_seed,
      )  # fmt: skip
      print(f"wrote {args.out}: {d['name']}, modality {args.modality}, classes {d['classes']}")
    elif args.data_command == "build":
      cfg = load_config(args.config, args)
      opts = builder.BuildOptions.from_config(cfg.data, cfg.model.resolution)
      build_data(args, opts)
      print(dataset.load(args.data_dir).info())
    elif args.data_command == "info":
      print(dataset.load(args.data_dir).info())
  except (folder.DataError, FileExistsError, ValueError) as e:
    raise SystemExit(f"data {args.data_command}: {e}") from None
  return 0


@contextlib.contextmanager
def staged_workdir(args):
  """``args.workdir`` as a local folder (a mirror of a remote one, uploaded at the end)."""
  import jax

  from dlsjax import paths

  wd = paths.StagedDir(args.workdir, primary=jax.process_index() == 0, process=jax.process_index())
  yield wd
  wd.push()


def start_distributed(args) -> None:
  """``jax.distributed`` from the flags, the environment or the cluster (dlsjax/distributed.py)."""
  from dlsjax import distributed

  distributed.initialize(
    "auto", coordinator=args.coordinator, num_processes=args.num_processes,
    process_id=args.process_id, timeout_s=args.distributed_timeout,
  )  # fmt: skip


def cmd_search(args) -> int:
  from dlsjax import search
  from dlsjax.data.folder import DataError

  cfg = load_config(args.config, args)
  start_distributed(args)
  try:
    with staged_workdir(args) as wd:
      search.search(
        cfg, args.data_dir, wd.local, seeds=args.seeds, resume=args.resume,
        stop_after=args.stop_after, on_checkpoint=wd.push,
      )  # fmt: skip
  except (DataError, search.SearchError) as e:
    raise SystemExit(f"search: {e}") from None
  runs = (
    [args.workdir] if args.seeds is None else [f"{args.workdir}/seed{k}" for k in range(args.seeds)]
  )
  for w in runs:
    print(f"search finished: {w}/alphas.png, {w}/genotype_argmax.json")
  return 0


def cmd_derive(args) -> int:
  from dlsjax import derivation, derive
  from dlsjax.data.folder import DataError

  try:
    overrides = derive.parse_overrides(args.config_overrides)
  except ValueError as e:
    raise SystemExit(f"derive: {e}") from None
  try:
    with staged_workdir(args) as wd:
      geno = derive.derive(
        wd.local,
        data_dir=args.data_dir,
        overrides=overrides,
      )
  except (DataError, derivation.DeriveError, ValueError) as e:
    raise SystemExit(f"derive: {e}") from None
  print(geno)
  w = args.workdir
  print(f"wrote {w}/genotype.json, {w}/derivation_log.json, {w}/genotype.png")
  return 0


def cmd_train(args) -> int:
  from dlsjax import train
  from dlsjax.data.folder import DataError

  cfg = load_config(args.config, args)
  if "train" not in cfg:
    raise SystemExit(f"train: config {args.config!r} has no train section (try paper_train)")
  start_distributed(args)
  try:
    with staged_workdir(args) as wd:
      dirs = train.train(
        cfg, args.genotype, args.data_dir, wd.local, runs=args.runs, resume=args.resume,
        stop_after=args.stop_after, on_checkpoint=wd.push,
      )  # fmt: skip
  except (DataError, train.TrainError) as e:
    raise SystemExit(f"train: {e}") from None
  print(f"training finished: {', '.join(str(d) for d in dirs)}")
  return 0


def cmd_evaluate(args) -> int:
  from dlsjax import evaluate, train
  from dlsjax.data.folder import DataError

  try:
    with staged_workdir(args) as wd:
      result = evaluate.evaluate(
        wd.local, split=args.split, data_dir=args.data_dir, trials=args.bootstrap,
        throughput_batch=args.throughput_batch, throughput_batches=args.throughput_batches,
      )  # fmt: skip
  except (DataError, train.TrainError) as e:
    raise SystemExit(f"evaluate: {e}") from None
  print(evaluate.format_table(result))
  w = args.workdir
  print(f"wrote {w}/metrics.json, {w}/predictions.csv, {w}/roc_micro.png, "
        f"{w}/roc_per_class.png, {w}/confusion.png")  # fmt: skip
  return 0


def cmd_gradcam(args) -> int:
  with staged_workdir(args) as wd:
    _gradcam(args, wd.local)
  return 0


def _gradcam(args, workdir) -> None:
  import pathlib

  from dlsjax import gradcam, plots, train
  from dlsjax.data import dataset
  from dlsjax.data.folder import DataError

  try:
    trained = train.load(workdir)
    ds = dataset.load(args.data_dir or trained.data_dir())
    classes = list(ds.desc.classes)
    target = None
    if args.target is not None:
      if args.target not in classes:
        raise DataError(f"--class {args.target!r} is not one of {classes}")
      target = classes.index(args.target)
    if not 0 <= args.run < len(trained.variables):
      raise DataError(f"--run {args.run}: the workdir has {len(trained.variables)} run(s)")
    explain = gradcam.make_gradcam(trained.model)
    for sid in args.specimen:
      split, ex = ds.find(sid, trained.spec.resolution)
      images = {k: v[None] for k, v in ex["images"].items()}
      heat, probs, cls = explain(trained.variables[args.run], images, target)
      out = pathlib.Path(args.out or workdir) / f"gradcam_{sid}.png"
      overlay = "WL" if "WL" in ex["images"] else ds.modalities[0]
      plots.gradcam_panel(
        ex["images"], heat, overlay, out,
        title=f"{sid} ({split}): true {classes[ex['label']]}, Grad-CAM of {classes[cls]} "
        f"(p={probs[cls]:.2f})",
      )  # fmt: skip
      print(f"wrote {out}")
  except (DataError, train.TrainError) as e:
    raise SystemExit(f"gradcam: {e}") from None


def cmd_predict(args) -> int:
  from dlsjax import paths, predict, train
  from dlsjax.data.folder import DataError

  try:
    p = predict.Predictor(paths.StagedDir(args.workdir).local)
    results = [p(d) for d in args.specimens]
  except (DataError, train.TrainError) as e:
    raise SystemExit(f"predict: {e}") from None
  text = json.dumps({"specimens": results}, indent=2)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  print(text)
  return 0


def cmd_demo(args) -> int:
  from dlsjax import demo

  cfg = load_config(args.config, args)
  with staged_workdir(args) as wd:
    report = demo.run(wd.local, cfg, data_folder=args.data_folder)
  print(f"wrote {report}" if wd.remote is None else f"wrote {args.workdir}/report.md")
  return 0


def cmd_experiment(args) -> int:
  from dlsjax import derivation, experiment, paths, search, train
  from dlsjax.data.folder import DataError

  try:
    pretrained = args.pretrained and str(paths.local(args.pretrained, "--pretrained"))
    with staged_workdir(args) as wd:
      out = experiment.run_table(
        args.table, args.data_dir, wd.local, config=load_config(args.config, args), runs=args.runs,
        config_name=" ".join(
          [args.config, *(f"--config.{k}={v}" for k, v in args.config_overrides)]
        ),
        pretrained=pretrained,
        only=[x.strip() for x in args.rows.split(",")] if args.rows else None,
      )  # fmt: skip
  except (
    DataError, experiment.ExperimentError, search.SearchError, derivation.DeriveError,
    train.TrainError,
  ) as e:  # fmt: skip
    raise SystemExit(f"experiment {args.table}: {e}") from None
  print(pathlib.Path(out["files"][0]).read_text())
  print("wrote " + ", ".join(out["files"]))
  return 0


def _add_distributed(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group(
    "several processes (one per host; see README 'Several processes and Cloud TPU VMs')"
  )
  g.add_argument(
    "--coordinator", help="HOST:PORT of process 0 (default: JAX_COORDINATOR_ADDRESS or the cluster)"
  )
  g.add_argument("--num-processes", type=int, help="processes in the job (or DLSJAX_NUM_PROCESSES)")
  g.add_argument("--process-id", type=int, help="this process, 0-based (or DLSJAX_PROCESS_ID)")
  g.add_argument(
    "--distributed-timeout", type=int, default=300,
    help="seconds to wait for all processes to reach the coordinator (default 300)",
  )  # fmt: skip


CONFIG_HELP = (
  "a config: NAME[:VARIANT][,MODEL] (paper, paper:tiny, paper_train:resnet18, medmnist:full) "
  "or path/to/config.py[:ARG]; change any field with --config.KEY=VALUE "
  "(e.g. --config.search.epochs=3)"
)


def _add_config(p: argparse.ArgumentParser, default: str | None) -> None:
  p.add_argument(
    "--config", default=default, metavar="SPEC", help=f"{CONFIG_HELP}; default {default}"
  )


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="dlsjax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)

  d = sub.add_parser("describe", help="parameters, alphas, FLOPs, HLO size and compile time")
  d.add_argument("--preset", help="a published genotype with its evaluation network (darts_v2)")
  d.add_argument(
    "--search-space", metavar="SPEC",
    help="a search config's supernet: paper | darts_cifar (or any SPEC with a search section)",
  )  # fmt: skip
  d.add_argument("--genotype", help="a genotype.json to build with --config (training phase)")
  d.add_argument(
    "--config", metavar="SPEC",
    help="the config of --genotype (default paper_train); --config.KEY=VALUE changes a field of "
    "whichever config the describe reads",
  )  # fmt: skip
  d.add_argument("--json", action="store_true", help="print one JSON object")
  d.add_argument(
    "--no-compile",
    action="store_true",
    help="skip compiling the forward (no compile time; FLOPs from the HLO)",
  )
  d.add_argument(
    "--structure-only",
    action="store_true",
    help="search spaces: parameters, alphas and parts only (no trace, HLO size or FLOPs; "
    "a big supernet's unrolled trace takes a minute on a small CPU)",
  )
  d.set_defaults(func=cmd_describe)

  data = sub.add_parser("data", help="make, convert, build and inspect datasets")
  dsub = data.add_subparsers(dest="data_command", required=True)
  p = dsub.add_parser("synth", help="write the synthetic default dataset folder")
  p.add_argument("--out", required=True, help="folder to create")
  p.add_argument("--specimens", type=int, default=240)
  p.add_argument("--patients", type=int, default=24)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size", type=int, default=96, help="raw image size in pixels")
  p = dsub.add_parser("from-npz", help="MedMNIST-style npz -> dataset folder (one modality)")
  p.add_argument("npz")
  p.add_argument("--out", required=True)
  p.add_argument("--modality", default="image", help="modality name (default image)")
  p.add_argument("--classes", help="comma-separated class names in label order")
  p.add_argument("--name", help="dataset name (default: the npz file name)")
  p.add_argument(
    "--val-fraction", type=float, default=0.1,
    help="without val_* arrays: this share of each class of train becomes val (default 0.1)",
  )  # fmt: skip
  p.add_argument("--val-seed", type=int, default=0, help="seed of that val split")
  p = dsub.add_parser("build", help="validate a dataset folder and build the TFDS dataset")
  p.add_argument("--manual-dir", required=True, help="the dataset folder (dataset.json, ...)")
  p.add_argument("--data-dir", required=True, help="where to write the built dataset")
  _add_config(p, "paper")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --data-dir")
  p = dsub.add_parser("info", help="splits, class counts and preprocessing of a built dataset")
  p.add_argument("--data-dir", required=True)
  data.set_defaults(func=cmd_data)

  p = sub.add_parser("search", help="bi-level architecture search (weights and alphas)")
  _add_config(p, "paper")
  p.add_argument("--data-dir", required=True, help="a dataset built by `dlsjax data build`")
  p.add_argument("--workdir", required=True, help="run folder (checkpoints, metrics, figures)")
  p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
  p.add_argument("--stop-after", type=int, help="stop after N steps (resume later)")
  p.add_argument(
    "--seeds", type=int,
    help="N searches (seeds 0..N-1) as one vmapped program; WORKDIR/seed{k} as a "
    "--config.seed=k run",
  )  # fmt: skip
  _add_distributed(p)
  p.set_defaults(func=cmd_search)

  p = sub.add_parser(
    "derive", help="derive the architecture of a finished search (MPDS)",
    description="Reads the search's own config; --config.derive.KEY=VALUE changes its derive "
    "section, e.g. --config.derive.method=argmax (registered methods: mpds, argmax, pt) or "
    "--config.derive.metric=loss.",
  )  # fmt: skip
  p.add_argument("--workdir", required=True, help="the search's run folder")
  p.add_argument("--data-dir", help="default: the dataset the search used")
  p.set_defaults(func=cmd_derive)

  p = sub.add_parser(
    "train", help="train a derived network or a baseline (--runs seeds)",
    description="The model is the config's model.arch: a model name as a config variant, "
    "e.g. --config paper_train:resnet18 (dls_darts, the default, and mmnas need --genotype; "
    "resnet18, efficientnet_b0, pyramidnet_shakedrop do not).",
  )  # fmt: skip
  p.add_argument("--genotype", help="genotype.json (from `dlsjax derive`) of a searched model")
  p.add_argument("--data-dir", required=True, help="a dataset built by `dlsjax data build`")
  p.add_argument("--workdir", required=True, help="training folder (runs, checkpoints)")
  _add_config(p, "paper_train")
  p.add_argument("--runs", type=int, default=1, help="seeds to train (the paper reports 5)")
  p.add_argument("--resume", action="store_true", help="continue unfinished runs")
  p.add_argument("--stop-after", type=int, help="stop after N steps (resume later)")
  _add_distributed(p)
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("evaluate", help="ACC, micro AUC with bootstrap CIs, ROC and confusion")
  p.add_argument("--workdir", required=True, help="a training folder")
  p.add_argument("--split", default="test")
  p.add_argument("--data-dir", help="default: the dataset the training used")
  p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
  p.add_argument("--throughput-batch", type=int, default=128)
  p.add_argument("--throughput-batches", type=int, default=10, help="0: skip the throughput")
  p.set_defaults(func=cmd_evaluate)

  p = sub.add_parser("gradcam", help="Grad-CAM panel of a specimen (paper Fig. 4)")
  p.add_argument("--workdir", required=True, help="a training folder")
  p.add_argument("--specimen", required=True, action="append", help="specimen id (repeatable)")
  p.add_argument("--class", dest="target", help="class to explain (default: the predicted)")
  p.add_argument("--run", type=int, default=0, help="which trained run (seed index)")
  p.add_argument("--data-dir", help="default: the dataset the training used")
  p.add_argument("--out", help="folder for the PNGs (default: the workdir)")
  p.set_defaults(func=cmd_gradcam)

  p = sub.add_parser("predict", help="grade specimen folders of raw modality images")
  p.add_argument("--workdir", required=True, help="a training folder")
  p.add_argument("specimens", nargs="+", help="folders named by specimen id, one image/modality")
  p.add_argument("--out", help="also write the JSON here")
  p.set_defaults(func=cmd_predict)

  p = sub.add_parser("experiment", help="the paper's Tables I-VI (search, train, evaluate rows)")
  p.add_argument("table", choices=["table1", "table2", "table3", "table4", "table5", "table6"])
  p.add_argument("--data-dir", required=True, help="a dataset built by `dlsjax data build`")
  p.add_argument("--workdir", required=True, help="experiment folder (shared by the tables)")
  p.add_argument(
    "--config", default="experiment:paper", metavar="SPEC",
    help="the budget: experiment:paper (the paper's settings), experiment:demo (a table in "
    "< 30 min on 2 CPU cores) or experiment:tiny; --config.KEY=VALUE changes a field",
  )  # fmt: skip
  p.add_argument("--runs", type=int, help="seeds per row (default: paper 5, demo 1)")
  p.add_argument("--pretrained", help="orbax checkpoint of ImageNet EfficientNet-B0 weights")
  p.add_argument(
    "--rows", help="only these rows, by label, comma-separated (e.g. 'DLS-DARTS,- MPDS')"
  )
  p.set_defaults(func=cmd_experiment)

  p = sub.add_parser("demo", help="synthesise -> build -> search -> derive -> train -> evaluate")
  p.add_argument("--workdir", default="runs/demo")
  _add_config(p, "demo")
  p.add_argument("--data-folder", help="a dataset folder to use instead of the synthetic set")
  p.set_defaults(func=cmd_demo)
  return parser


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax / TFDS progress chatter
  from dlsjax import configs, runtime

  runtime.setup()
  try:
    argv, overrides = configs.split_flags(sys.argv[1:] if argv is None else argv)
  except configs.ConfigError as e:
    raise SystemExit(f"dlsjax: {e}") from None
  args = build_parser().parse_args(argv)
  args.config_overrides = overrides
  # Commands with --config take --config.KEY=VALUE; derive changes the derive.* fields of
  # the search's own config; the others read the config their run was written with.
  if overrides and not (hasattr(args, "config") or args.command == "derive"):
    raise SystemExit(
      f"dlsjax {' '.join(a for a in argv[:2] if not a.startswith('-'))}: takes no config "
      f"(--config.{overrides[0][0]} given)"
    )
  from dlsjax import distributed, paths

  try:
    return args.func(args)
  except distributed.Preempted as e:
    print(f"dlsjax: {e}", file=sys.stderr)
    return distributed.PREEMPTED_EXIT_CODE
  except (paths.PathError, distributed.DistributedError) as e:
    raise SystemExit(f"dlsjax {args.command}: {e}") from None
  except ValueError as e:  # invalid config values (NetworkSpec, hyper-parameters)
    if os.environ.get("DLSJAX_TRACEBACK"):
      raise
    raise SystemExit(f"dlsjax {args.command}: {e} (DLSJAX_TRACEBACK=1 shows where)") from None


if __name__ == "__main__":
  sys.exit(main())
