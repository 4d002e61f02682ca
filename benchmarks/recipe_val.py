"""Training-recipe sweeps on the val split: one model, one recipe, val AUC / ACC per epoch.

    python benchmarks/recipe_val.py --data-dir BUILT [--model dls_darts|resnet18]
        [--genotype random:1|PATH] [--c 16] [--lr 0.05] [--gamma 0] [--class-weight balanced]
        [--epochs 40] [--seed 0] [--no-vflip] [--adam] ...

The quick loop behind the ``medmnist`` config's choices (benchmarks/RESULTS.md,
"Results on real data"): the training split in memory, NumPy crop + flips (no
CutMix), dlsjax's models, losses and optimizers, the ``medmnist`` config's
model fitted to the data with ``--c`` / ``--kr`` / ``--div`` applied. After
every epoch it prints the val split's AUC (binary for two classes, else
micro) and ACC, then one ``RESULT`` JSON line (best and last val AUC). It
never reads the test split: recipe choices are made here, and only
``dlsjax evaluate`` reports test numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsjax import derived_net, genotype, losses, metrics, models, netspec, optim, train
from dlsjax.configs import get_config
from dlsjax.data import augment, dataset
from dlsjax.data.fit import fit_config


def split_arrays(ds, split: str):
  src = ds.source(split)
  examples = [ds.decode(src[i]) for i in range(len(src))]
  images = {m: np.stack([e["images"][m] for e in examples]) for m in ds.modalities}
  return images, np.array([e["label"] for e in examples])


def build_model(args, ds):
  cfg = fit_config(get_config("medmnist"), ds)
  m = cfg.model
  m.c_sin_train, m.k_r, m.k_train, m.cell_channels_divisor = args.c, args.kr, args.ktrain, args.div
  choice = None
  if args.model == "resnet18":
    models.apply_preset(cfg, "resnet18")
    cfg.model.baselines.resnet18.update(dict(input_size=0, stem="cifar", width=args.c))
  spec = netspec.spec_from_config(m, phase="train")
  if args.model == "dls_darts":
    if args.genotype.startswith("random:"):
      _, choice, _ = derived_net.random_argmax_network(m, seed=int(args.genotype[7:]))
    else:
      choice = genotype.Genotype.load(args.genotype).to_choice(spec.topologies(), spec.op_set)
  return models.build(cfg, spec, choice), spec.num_classes


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--data-dir", required=True)
  ap.add_argument("--model", default="dls_darts", choices=["dls_darts", "resnet18"])
  ap.add_argument("--genotype", default="random:1", help="random:SEED or a genotype.json")
  ap.add_argument("--c", type=int, default=16, help="C_sin_train (ResNet-18: its width)")
  ap.add_argument("--kr", type=int, default=2)
  ap.add_argument("--ktrain", type=int, default=1)
  ap.add_argument("--div", type=int, default=2)
  ap.add_argument("--epochs", type=int, default=40)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=0.05)
  ap.add_argument("--wd", type=float, default=3e-4)
  ap.add_argument("--gamma", type=float, default=0.0, help="focal gamma (0: cross-entropy)")
  ap.add_argument("--class-weight", default="none", choices=["none", "balanced"])
  ap.add_argument("--pad", type=int, default=2, help="crop padding")
  ap.add_argument("--no-vflip", action="store_true")
  ap.add_argument("--adam", action="store_true", help="AdamW, cosine, instead of SGD")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  ds = dataset.load(args.data_dir)
  x_train, y_train = split_arrays(ds, "train")
  x_val, y_val = split_arrays(ds, "val")
  model, k = build_model(args, ds)
  variables = derived_net.init(model, jax.random.PRNGKey(args.seed))
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  steps = len(y_train) // args.batch
  if args.adam:
    tx = optax.adamw(
      optax.cosine_decay_schedule(args.lr, args.epochs * steps), weight_decay=args.wd
    )
  else:
    schedule = optim.cosine_by_epoch(args.lr, 1e-4, args.epochs, steps)
    tx = optim.sgd(schedule, momentum=0.9, weight_decay=args.wd, grad_clip=5.0)
  opt = tx.init(variables["params"])
  weights = train.class_weights(np.bincount(y_train, minlength=k), args.class_weight) or (1.0,) * k
  class_w = jnp.asarray(weights, jnp.float32)

  @jax.jit
  def step(variables, opt, images, labels):
    def loss_fn(params):
      logits, stats, _ = derived_net.apply(
        model, {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True
      )
      loss = losses.focal_loss(
        logits, jax.nn.one_hot(labels, k), gamma=args.gamma, weights_B=class_w[labels]
      )
      return loss, stats

    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    upd, opt = tx.update(g, opt, variables["params"])
    return (
      {"params": optax.apply_updates(variables["params"], upd), "batch_stats": stats},
      opt,
      loss,
    )

  predict = jax.jit(train.make_predict_fn(model))

  def val_metrics(variables):
    probs = np.asarray(predict(variables, x_val))
    auc = metrics.classification_metrics(y_val, probs)
    return auc.get("auc_binary", auc["auc_micro"]), auc["acc"]

  rng = np.random.default_rng(args.seed)
  print(f"params {n_params / 1e6:.3f}M steps/epoch {steps}", flush=True)
  best, t0 = (-1.0, 0), time.time()
  for epoch in range(args.epochs):
    order = rng.permutation(len(y_train))
    for i in range(steps):
      idx = order[i * args.batch : (i + 1) * args.batch]
      crops = [
        augment.random_crop_flip(
          {m: x[j] for m, x in x_train.items()}, rng, padding=args.pad, vflip=not args.no_vflip
        )
        for j in idx
      ]
      images = {m: np.stack([c[m] for c in crops]) for m in x_train}
      variables, opt, loss = step(variables, opt, images, y_train[idx])
    auc, acc = val_metrics(variables)
    best = max(best, (auc, -(epoch + 1)))
    print(
      f"epoch {epoch + 1} loss {float(loss):.3f} val auc {auc:.3f} acc {acc:.3f} "
      f"({time.time() - t0:.0f} s)",
      flush=True,
    )
  result = dict(
    vars(args), params=n_params, best_val_auc=best[0], best_epoch=-best[1], last_val_auc=auc,
    last_val_acc=acc, seconds=round(time.time() - t0, 1),
  )  # fmt: skip
  print("RESULT", json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
