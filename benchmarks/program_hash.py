"""Fingerprints of the compiled programs of the retraining and search steps: whether a change of the Python code
changed what XLA compiles.

Lowers, at a small size (C=4, 3 cells, batch 8), the functional retraining step (`retrain.make_train_step`),
the same step through the NNX module (`benchmarks/retrain_step.py`'s nnx path) and the fused search step in
first order and exact second order, strips location metadata, and prints each program's length and SHA-256.
Run it in two checkouts (``PYTHONPATH=/path/to/checkout python benchmarks/program_hash.py``): equal lines mean
the same program, so timing differences between them are the machine's.
"""
import hashlib
import re

from absl import app
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from darts_jax import bilevel, modules, networks, retrain, steps, supernet

EPOCHS, STEPS_PER_EPOCH = 10, 100


def _fingerprint(text: str) -> str:
  text = re.sub(r"#loc[0-9]*( = .*)?", "", re.sub(r"loc\([^)]*\)", "", text))
  return f"{len(text)} characters, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _retrain_programs():
  cfg = networks.NetworkConfig(genotype="DARTS_V2", C=4, layers=3, auxiliary=True, in_channels=1, num_classes=10,
                               dw_impl="loop")
  conf = ml_collections.ConfigDict({"lr": 0.025, "lr_min": 0.0, "epochs": EPOCHS, "momentum": 0.9,
                                    "weight_decay": 3e-4, "grad_clip": 5.0})
  tx = retrain.optimizer(conf, STEPS_PER_EPOCH)
  key = jax.random.PRNGKey(0)
  batch = {"image": jax.random.normal(key, (8, 28, 28, 1)), "label": jnp.arange(8) % 10}
  params, stats = networks.init(key, cfg)
  state = retrain.TrainState(params, stats, tx.init(params), jnp.zeros((), jnp.int32), key)
  step = retrain.make_train_step(cfg, tx, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, drop_path_prob=0.2,
                                 auxiliary_weight=0.4)
  yield "retrain, functional", step.lower(state, batch).as_text()

  model = modules.Network(cfg, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, nstate = nnx.split((model, optimizer))

  def pure_step(nstate, batch):
    model, optimizer = nnx.merge(graphdef, nstate)
    model.drop_path_prob = 0.2 * (optimizer.step[...] // STEPS_PER_EPOCH).astype(jnp.float32) / EPOCHS

    def loss_fn(model):
      logits, aux = model(batch["image"], train=True)
      xent = lambda z: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, batch["label"]))
      return xent(logits) + 0.4 * xent(aux)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss
  yield "retrain, NNX module", jax.jit(pure_step, donate_argnums=0).lower(nstate, batch).as_text()


def _search_programs():
  cfg = supernet.SupernetConfig(C=4, layers=3, in_channels=1)
  key = jax.random.PRNGKey(0)
  batch = {"image": jax.random.normal(key, (8, 16, 16, 1)), "label": jnp.arange(8) % 10}
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  for mode in ("first_order", "second_order_exact"):
    hp = bilevel.SearchHParams(hypergradient=mode, steps_per_epoch=STEPS_PER_EPOCH)
    state = bilevel.init_state(supernet.init(key, cfg), supernet.init_alphas(key, cfg), hp, key)
    step = steps.make_search_step(problem, hp, backend="fused")
    yield f"search, fused, {mode}", step.lower(state, batch, batch).as_text()


def main(argv):
  del argv
  for name, text in list(_retrain_programs()) + list(_search_programs()):
    print(f"{name}: {_fingerprint(text)}", flush=True)


if __name__ == "__main__":
  app.run(main)
