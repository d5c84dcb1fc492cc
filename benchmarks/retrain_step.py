"""Benchmark of the jitted retraining step of a final network: trace+compile seconds and seconds per step, per
depthwise-convolution implementation (`ops.Ctx.dw_impl`), so the default can be chosen by measurement.

  python benchmarks/retrain_step.py        # fashion_retrain.py's network: DARTS_V2, C=16, 8 cells, 28x28x1, b64
  python benchmarks/retrain_step.py --C=36 --layers=20 --image=32 --in_channels=3 --batch=96 --impls=loop,shift

Prints one Markdown table row per implementation.
"""
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections

from darts_jax import networks
from darts_jax import retrain

_GENOTYPE = flags.DEFINE_string("genotype", "DARTS_V2", "registry name, genotype text or file")
_C = flags.DEFINE_integer("C", 16, "initial channels")
_LAYERS = flags.DEFINE_integer("layers", 8, "cells")
_BATCH = flags.DEFINE_integer("batch", 64, "batch size")
_IMAGE = flags.DEFINE_integer("image", 28, "image side")
_IN = flags.DEFINE_integer("in_channels", 1, "image channels")
_IMPLS = flags.DEFINE_list("impls", ["loop", "shift"], "depthwise implementations to compare")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps after the first")


def run(impl: str):
  cfg = networks.NetworkConfig(genotype=_GENOTYPE.value, C=_C.value, layers=_LAYERS.value, auxiliary=True,
                               in_channels=_IN.value, num_classes=10, dw_impl=impl)
  conf = ml_collections.ConfigDict({"lr": 0.025, "lr_min": 0.0, "epochs": 10, "momentum": 0.9,
                                    "weight_decay": 3e-4, "grad_clip": 5.0})
  tx = retrain.optimizer(conf, 100)
  key = jax.random.PRNGKey(0)
  params, stats = networks.init(key, cfg)
  state = retrain.TrainState(params, stats, tx.init(params), jnp.zeros((), jnp.int32), key)
  step = retrain.make_train_step(cfg, tx, epochs=10, steps_per_epoch=100, drop_path_prob=0.2,
                                 auxiliary_weight=0.4)
  batch = {"image": jax.random.normal(key, (_BATCH.value, _IMAGE.value, _IMAGE.value, _IN.value)),
           "label": jnp.arange(_BATCH.value) % 10}
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(_STEPS.value + 1):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return compile_s, statistics.median(times[1:])


def main(argv):
  del argv
  print(f"genotype={_GENOTYPE.value} C={_C.value} layers={_LAYERS.value} batch={_BATCH.value} "
        f"{_IMAGE.value}x{_IMAGE.value}x{_IN.value} backend={jax.default_backend()}")
  print("| dw_impl | trace+compile s | s/step (median) |")
  print("|---|---|---|")
  for impl in _IMPLS.value:
    c, s = run(impl)
    print(f"| {impl} | {c:.1f} | {s:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
