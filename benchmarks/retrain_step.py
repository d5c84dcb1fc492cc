"""Benchmark of the jitted retraining step of a final network: trace+compile seconds and seconds per step, per
depthwise-convolution implementation (`ops.Ctx.dw_impl`), so the default can be chosen by measurement, and per
path through the network, so the Flax NNX module can be compared with the functional code it wraps:

  functional  `retrain.make_train_step` over explicit pytrees (what experiments/retrain.py runs)
  nnx         the same step through `modules.Network` and an ``nnx.Optimizer``: ``nnx.split`` once, a
              ``jax.jit`` of a pure function over the split state with ``nnx.merge`` inside
  nnx_jit     the same step as a user's ``nnx.jit`` of ``(model, optimizer, batch)``; it cannot be lowered
              apart from its call, so its trace+compile figure is the first call's wall time (one step more)

  python benchmarks/retrain_step.py        # fashion_retrain.py's network: DARTS_V2, C=16, 8 cells, 28x28x1, b64
  python benchmarks/retrain_step.py --C=36 --layers=20 --image=32 --in_channels=3 --batch=96 --impls=loop,shift
  python benchmarks/retrain_step.py --C=8 --layers=5 --batch=32 --impls=loop --paths=nnx,nnx_jit

Every path takes the same optimizer (SGD with momentum, weight decay, clipping, cosine schedule), drop path
scheduled from 0.2 and the auxiliary head at weight 0.4. Prints one Markdown table row per path and implementation.
"""
import statistics
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from darts_jax import modules
from darts_jax import networks
from darts_jax import retrain

_GENOTYPE = flags.DEFINE_string("genotype", "DARTS_V2", "registry name, genotype text or file")
_C = flags.DEFINE_integer("C", 16, "initial channels")
_LAYERS = flags.DEFINE_integer("layers", 8, "cells")
_BATCH = flags.DEFINE_integer("batch", 64, "batch size")
_IMAGE = flags.DEFINE_integer("image", 28, "image side")
_IN = flags.DEFINE_integer("in_channels", 1, "image channels")
_IMPLS = flags.DEFINE_list("impls", ["loop", "shift"], "depthwise implementations to compare")
_PATHS = flags.DEFINE_list("paths", ["functional"], "functional, nnx and/or nnx_jit (see the docstring)")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps after the first")

EPOCHS, STEPS_PER_EPOCH, DROP_PATH, AUX_WEIGHT = 10, 100, 0.2, 0.4


def _xent(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _nnx_step_fn(model, optimizer, batch):
  """`retrain.make_train_step`'s step on a `modules.Network`, updating the model and optimizer in place."""
  model.drop_path_prob = DROP_PATH * (optimizer.step[...] // STEPS_PER_EPOCH).astype(jnp.float32) / EPOCHS

  def loss_fn(model):
    logits, aux = model(batch["image"], train=True)
    loss, aux_loss = _xent(logits, batch["label"]), _xent(aux, batch["label"])
    return loss + AUX_WEIGHT * aux_loss, (loss, aux_loss, logits)

  (total, (loss, aux_loss, logits)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  grad_norm = optax.global_norm(grads)
  acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
  return {"loss": loss, "aux_loss": aux_loss, "acc": acc, "grad_norm": grad_norm,
          "finite": jnp.isfinite(total) & jnp.isfinite(grad_norm)}


def _timed(call, state):
  """Median seconds per step of `call(state) -> (state, metrics)` over the timed steps, after a first one."""
  times = []
  for _ in range(_STEPS.value + 1):
    t = time.perf_counter()
    state, metrics = call(state)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return statistics.median(times[1:])


def run(path: str, impl: str):
  cfg = networks.NetworkConfig(genotype=_GENOTYPE.value, C=_C.value, layers=_LAYERS.value, auxiliary=True,
                               in_channels=_IN.value, num_classes=10, dw_impl=impl)
  conf = ml_collections.ConfigDict({"lr": 0.025, "lr_min": 0.0, "epochs": EPOCHS, "momentum": 0.9,
                                    "weight_decay": 3e-4, "grad_clip": 5.0})
  tx = retrain.optimizer(conf, STEPS_PER_EPOCH)
  key = jax.random.PRNGKey(0)
  batch = {"image": jax.random.normal(key, (_BATCH.value, _IMAGE.value, _IMAGE.value, _IN.value)),
           "label": jnp.arange(_BATCH.value) % 10}
  if path == "functional":
    params, stats = networks.init(key, cfg)
    state = retrain.TrainState(params, stats, tx.init(params), jnp.zeros((), jnp.int32), key)
    step = retrain.make_train_step(cfg, tx, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
                                   drop_path_prob=DROP_PATH, auxiliary_weight=AUX_WEIGHT)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    return time.perf_counter() - t0, _timed(lambda s: compiled(s, batch), state)
  model = modules.Network(cfg, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  if path == "nnx":
    graphdef, state = nnx.split((model, optimizer))

    def pure_step(state, batch):
      model, optimizer = nnx.merge(graphdef, state)
      metrics = _nnx_step_fn(model, optimizer, batch)
      return nnx.state((model, optimizer)), metrics

    t0 = time.perf_counter()
    compiled = jax.jit(pure_step, donate_argnums=0).lower(state, batch).compile()
    return time.perf_counter() - t0, _timed(lambda s: compiled(s, batch), state)
  if path == "nnx_jit":
    step = nnx.jit(_nnx_step_fn)
    t0 = time.perf_counter()
    jax.block_until_ready(step(model, optimizer, batch))
    first_s = time.perf_counter() - t0
    return first_s, _timed(lambda s: (s, step(model, optimizer, batch)), None)
  raise ValueError(f"unknown path {path!r}; use functional, nnx or nnx_jit")


def main(argv):
  del argv
  print(f"genotype={_GENOTYPE.value} C={_C.value} layers={_LAYERS.value} batch={_BATCH.value} "
        f"{_IMAGE.value}x{_IMAGE.value}x{_IN.value} backend={jax.default_backend()}")
  print("| path | dw_impl | trace+compile s | s/step (median) |")
  print("|---|---|---|---|")
  for path in _PATHS.value:
    for impl in _IMPLS.value:
      c, s = run(path, impl)
      print(f"| {path} | {impl} | {c:.1f} | {s:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
