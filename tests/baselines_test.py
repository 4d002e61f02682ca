"""The comparison CNNs (Table I): sizes against the published models, input, ShakeDrop, the
pretrained-weights loader, the MMNAS preset and the ``--model`` switch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PAPER_MODALITIES

from dlsjax import baselines, derived_net, describe, models, netspec
from dlsjax.baselines.pyramidnet import shake_drop
from dlsjax.configs import get_config
from dlsjax.netspec import Modality, NetworkSpec


def spec_of(channels=3, classes=1000, resolution=224, modalities=None):
  return NetworkSpec(
    modalities=modalities or (Modality("image", channels),),
    num_classes=classes,
    c_sin=4,
    cells=("normal",),
    cell_channels=2,
    resolution=resolution,
  )


def n_params(model) -> int:
  shapes = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  return describe.count_params(shapes["params"])


@pytest.mark.parametrize(
  "name,expected",
  # torchvision's resnet18 / efficientnet_b0 (3 channels, 1000 classes): exact counts.
  [("resnet18", 11_689_512), ("efficientnet_b0", 5_288_548)],
)
def test_imagenet_baselines_have_the_published_parameter_counts(name, expected):
  assert n_params(baselines.build(name, spec_of())) == expected


def test_paper_rows_have_nine_input_channels_and_the_papers_sizes():
  """Table I: ResNet-18 11.21 M, EfficientNet-B0 4.06 M (9 channels, 4 grades, 64 px data)."""
  cfg = get_config("paper_train")
  spec = netspec.spec_from_config(cfg.model, phase="train")
  assert sum(m.channels for m in spec.modalities) == 9
  for name, paper_m in (("resnet18", 11.21), ("efficientnet_b0", 4.06)):
    models.apply_preset(cfg, name)
    model = models.build(cfg, spec)
    shapes = jax.eval_shape(lambda m=model: derived_net.init(m, jax.random.PRNGKey(0)))
    assert shapes["params"]["stem_conv"]["kernel"].shape[2] == 9
    assert describe.count_params(shapes["params"]) / 1e6 == pytest.approx(paper_m, rel=0.015)


def test_pyramidnet_width_schedule_and_size():
  """PyramidNet-110 (alpha 48, basic blocks): 1.7 M parameters in Han et al. (we count 1.77 M
  with BatchNorm scales and biases; PyramidNet-272 alpha 200 bottleneck: 26.2 M, as published
  for PyramidNet + ShakeDrop)."""
  cfg = dict(depth=110, alpha=48.0, bottleneck=False)
  model = baselines.build("pyramidnet_shakedrop", spec_of(3, 10, 32), cfg)
  shapes = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  assert describe.count_params(shapes["params"]) / 1e6 == pytest.approx(1.7, rel=0.05)
  p = shapes["params"]
  # Width grows by alpha / 54 per block: 16 + 48 = 64 at the last block.
  assert p["s2b17"]["conv2"]["kernel"].shape[-1] == 64
  assert p["s0b0"]["conv1"]["kernel"].shape[-1] == round(16 + 48 / 54)
  with pytest.raises(ValueError, match="multiple of 6"):
    cfg = baselines.hparams("pyramidnet_shakedrop", dict(depth=111, bottleneck=False))
    _ = cfg.blocks_per_stage
  # The size the docs cite for Table I's PyramidNet-272 (alpha 200, bottleneck), 10 classes.
  big = baselines.build("pyramidnet_shakedrop", spec_of(3, 10, 32), dict(depth=272, alpha=200.0))
  shapes = jax.eval_shape(lambda: derived_net.init(big, jax.random.PRNGKey(0)))
  assert describe.count_params(shapes["params"]) / 1e6 == pytest.approx(26.21, abs=0.01)


def test_shakedrop_forward_and_backward_coefficients_differ():
  x = jnp.ones((64, 2, 2, 3))
  # Test time: the expectation (1 - p) of the branch.
  np.testing.assert_allclose(shake_drop(x, None, 0.3, train=False), 0.7 * x)
  y, vjp = jax.vjp(lambda x: shake_drop(x, jax.random.PRNGKey(3), 0.5, train=True), x)
  (g,) = vjp(jnp.ones_like(y))
  fwd, bwd = np.asarray(y[:, 0, 0, 0]), np.asarray(g[:, 0, 0, 0])
  assert np.all(bwd >= 0) and np.all(bwd <= 1)  # b + beta - b beta, beta in [0, 1]
  if np.allclose(fwd, 1):  # gate b = 1: the branch passes unchanged both ways
    np.testing.assert_allclose(bwd, 1)
  else:  # gate b = 0: alpha in [-1, 1] forward, an independent beta backward
    assert fwd.min() < 0 < fwd.max() and not np.allclose(fwd, bwd)
  gates = [
    float(shake_drop(x, jax.random.PRNGKey(k), 0.5, train=True)[0, 0, 0, 0] == 1) for k in range(40)
  ]
  assert 0.2 < np.mean(gates) < 0.8  # b ~ Bernoulli(1 - p) per batch


@pytest.mark.parametrize(
  "name,overrides",
  [
    ("resnet18", dict(stem="cifar", input_size=0, width=4, stage_blocks=(1, 1))),
    ("pyramidnet_shakedrop", dict(depth=11, alpha=12.0)),
  ],
)
def test_baselines_train_step_on_the_modalities(name, overrides):
  spec = spec_of(modalities=PAPER_MODALITIES, classes=4, resolution=8)
  model = baselines.build(name, spec, overrides)
  v = derived_net.init(model, jax.random.PRNGKey(0))
  images = {m.name: jax.random.normal(jax.random.PRNGKey(i), (4, 8, 8, 3)) for i, m in
            enumerate(spec.modalities)}  # fmt: skip

  @jax.jit
  def step(v, images):
    def loss(params):
      logits, stats, _ = derived_net.apply(
        model, {**v, "params": params}, images, train=True, rngs={"dropout": jax.random.key(1)}
      )
      return jnp.mean(logits**2), stats

    (value, stats), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
    return value, stats, g

  loss, stats, grads = step(v, images)
  assert np.isfinite(loss) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grads))
  old = jax.tree.leaves(v["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(stats), old, strict=True))
  logits, _, _ = derived_net.apply(model, v, images, train=False)
  assert logits.shape == (4, 4)
  # The modalities are concatenated in the spec's order: swapping two changes the output.
  swapped = {**images, "NIR1": images["NIR2"], "NIR2": images["NIR1"]}
  assert not np.allclose(derived_net.apply(model, v, swapped, train=False)[0], logits)
  with pytest.raises(ValueError, match="missing modality 'WL'"):
    model.apply(v, {"NIR1": images["NIR1"]}, train=False)


@pytest.mark.parametrize("stride,k", [(1, 3), (2, 5)])
def test_efficientnet_depthwise_equals_flax_grouped_conv(stride, k):
  """Same parameters and output as nn.Conv(C, feature_group_count=C) (checkpoint-compatible)."""
  import flax.linen as nn

  from dlsjax.baselines.efficientnet import DepthwiseConv

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 6))
  v = DepthwiseConv(k, stride, "toeplitz").init(jax.random.PRNGKey(1), x)
  ref = nn.Conv(6, (k, k), stride, padding=k // 2, feature_group_count=6, use_bias=False)
  np.testing.assert_allclose(
    DepthwiseConv(k, stride, "toeplitz").apply(v, x), ref.apply(v, x), atol=2e-6
  )


def test_efficientnet_forward_and_sizes_of_its_blocks():
  """Eval-mode forward of a small B0 (its jitted training step takes ~30 s to compile on 2 CPU
  cores; the demo-budget tables train it) and the MBConv widths and strides."""
  small = dict(input_size=0, stem_stride=1, width=0.25, depth=0.25)
  spec = spec_of(modalities=PAPER_MODALITIES, classes=4, resolution=8)
  model = baselines.build("efficientnet_b0", spec, small)
  shapes = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  v = jax.tree.map(lambda s: jnp.full(s.shape, 0.05, s.dtype), shapes)
  images = {m.name: jnp.ones((2, 8, 8, 3)) for m in spec.modalities}
  logits, state = jax.jit(lambda v: model.apply(v, images, train=False, mutable=["intermediates"]))(
    v
  )
  assert logits.shape == (2, 4) and np.all(np.isfinite(logits))
  assert state["intermediates"]["features"][0].shape == (2, 1, 1, 320)  # 8 px / 2^4 strides
  p = shapes["params"]
  assert [p[f"s{i}b0"]["project"]["kernel"].shape[-1] for i in range(7)] == [8, 8, 16, 24, 32,
                                                                             48, 80]  # fmt: skip
  assert p["s1b0"]["se_reduce"]["kernel"].shape[-1] == 8 // 4  # SE: a quarter of the block input


def test_pretrained_weights_load_except_stem_and_head(tmp_path):
  """The loader (used for ImageNet EfficientNet-B0) on a small ResNet: stem and head re-initialised
  for 9 channels and 4 grades, every other leaf the checkpoint's."""
  import orbax.checkpoint as ocp

  small = dict(stem="cifar", input_size=0, width=4, stage_blocks=(1, 1))
  imagenet = baselines.build("resnet18", spec_of(3, 1000, 8), small)
  src = derived_net.init(imagenet, jax.random.PRNGKey(7))
  ocp.PyTreeCheckpointer().save(tmp_path / "b0", src)
  ours = baselines.build("resnet18", spec_of(modalities=PAPER_MODALITIES, classes=4,
                                             resolution=8), small)  # fmt: skip
  fresh = derived_net.init(ours, jax.random.PRNGKey(0))
  loaded, report = baselines.load_pretrained(fresh, tmp_path / "b0")
  assert report["loaded"] > 10 and any("stem_conv" in k for k in report["reinitialised"])
  head = loaded["params"]["head"]["kernel"]
  np.testing.assert_array_equal(head, fresh["params"]["head"]["kernel"])
  assert loaded["params"]["stem_conv"]["kernel"].shape[2] == 9
  np.testing.assert_array_equal(
    loaded["params"]["s1b0"]["conv2"]["kernel"], src["params"]["s1b0"]["conv2"]["kernel"]
  )
  np.testing.assert_array_equal(
    loaded["batch_stats"]["s1b0"]["bn1"]["mean"], src["batch_stats"]["s1b0"]["bn1"]["mean"]
  )
  wider = baselines.build("resnet18", spec_of(3, 1000, 8), {**small, "width": 8})
  with pytest.raises(ValueError, match="has shape"):
    baselines.load_pretrained(derived_net.init(wider, jax.random.PRNGKey(0)), tmp_path / "b0")
  with pytest.raises(FileNotFoundError):
    baselines.load_pretrained(fresh, tmp_path / "nope")


def test_mmnas_preset_normal_cell_first_then_reductions_only():
  cfg = get_config("paper:mmnas")  # the model as a config variant
  assert cfg.to_dict() == models.apply_preset(get_config("paper"), "mmnas").to_dict()
  assert cfg.model.arch == "mmnas" and cfg.derive.method == "argmax"
  spec = netspec.spec_from_config(cfg.model, phase="search")
  assert spec.cells == ("normal", "reduce", "reduce", "reduce")
  kinds = (spec.stem_kind("fusing"), spec.stem_kind("fl"), spec.fl_stem_cells)
  assert kinds == ("concat", "concat", 1)
  assert set(spec.topologies()) == {"normal", "reduce"}
  assert spec.op_set == models.netspec.ops.PAPER10
  # The FL Stem output is s0 of the first (fusing, normal) cell only: 2 inputs of C_sout.
  small = dataclasses.replace(spec, c_sin=4, cell_channels=2, resolution=16,
                              op_set=("none", "skip_connect", "nor_conv_3x3"))  # fmt: skip
  choice = {"normal": np.full(9, 2, np.int32), "reduce": np.full(9, 2, np.int32)}
  model = derived_net.make_derived_net(small, choice)
  shapes = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  p = shapes["params"]
  assert p["fl_stem"]["kernel"].shape[0] == 2 * 4  # NIR-I + NIR-II stems concatenated (1x1)
  assert p["fusing_stem"]["kernel"].shape[0] == 3 * 4
  with pytest.raises(ValueError, match="unknown model"):
    models.apply_preset(cfg, "vgg")


def test_train_cli_model_choice_errors(tmp_path):
  from dlsjax import main

  with pytest.raises(SystemExit, match="drop --genotype"):
    main.main(["train", "--config", "paper_train:resnet18", "--genotype", "g.json",
               "--data-dir", "d", "--workdir", str(tmp_path)])  # fmt: skip
  with pytest.raises(SystemExit, match="drop --genotype"):  # the field itself, same path
    main.main(["train", "--config.model.arch=resnet18", "--genotype", "g.json",
               "--data-dir", "d", "--workdir", str(tmp_path)])  # fmt: skip
  with pytest.raises(SystemExit, match="pass --genotype"):
    main.main(["train", "--data-dir", "d", "--workdir", str(tmp_path)])
  with pytest.raises(SystemExit, match=r"unknown config 'paper_trian' \(did you mean paper_train"):
    main.main(["train", "--config", "paper_trian:resnet18", "--data-dir", "d",
               "--workdir", str(tmp_path)])  # fmt: skip
  with pytest.raises(SystemExit, match="unknown variant 'vgg'"):
    main.main(["train", "--config", "paper_train:vgg", "--data-dir", "d",
               "--workdir", str(tmp_path)])  # fmt: skip
  with pytest.raises(SystemExit, match="model.arch: unknown model 'vgg'"):
    main.main(["train", "--config.model.arch=vgg", "--data-dir", "d", "--workdir", str(tmp_path)])
  with pytest.raises(SystemExit, match="--config paper_train:mmnas"):  # arch without its space
    main.main(["train", "--config.model.arch=mmnas", "--data-dir", "d", "--workdir", str(tmp_path)])
