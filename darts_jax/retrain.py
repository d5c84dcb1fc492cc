"""Retraining a genotype from scratch: `train_and_evaluate(config, workdir)` (the reference's `train.py`).

The network of `darts_jax.networks` built from ``config.genotype`` (a registry name such as ``DARTS_V2``, a
``genotype.json``/``.txt`` path, ``Genotype(...)`` text, or ``"random"`` for a genotype drawn uniformly with
``config.seed``: the random baseline under the same protocol) is trained on the training split (or
``config.subset`` examples of it) and scored on the test split. The protocol is the paper's: SGD with momentum
0.9 (no Nesterov), learning rate ``config.lr`` annealed by a per-epoch cosine to ``config.lr_min`` (0), L2
weight decay 3e-4, gradients clipped to global norm 5, the auxiliary head's loss weighted 0.4, drop-path
probability growing linearly from 0 to ``config.drop_path_prob`` over the epochs (a traced value, so it never
recompiles), optional Cutout.

The work directory (see `darts_jax.workdir`) holds the resolved config, ``metrics.jsonl`` (train loss and
accuracy every ``log_every`` steps; per epoch the train means, learning rate, drop-path probability, test loss
and accuracy, seconds per step), TensorBoard events, orbax checkpoints of the whole state after every epoch
(params, BatchNorm statistics, optimizer state, step, rng; the data position is the step), and at the end
``genotype.txt``, ``genotype.json``, ``cells_normal.png/.svg``, ``cells_reduce.png/.svg`` and ``summary.json``
(test_acc, num_params without the auxiliary head, train_seconds, genotype, seed, versions). Re-running on the
same workdir resumes (a finished run returns its summary without training); NaN/Inf stops the run with
`workdir.Diverged`, keeping the last good checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import bilevel
from darts_jax import data as data_lib
from darts_jax import exports
from darts_jax import genotypes
from darts_jax import loop
from darts_jax import networks
from darts_jax import ops
from darts_jax import parallel
from darts_jax import workdir as wd
from darts_jax.search_space import DARTS_SPACE

# Config keys that may change when a run is continued.
RESUMABLE_KEYS = ("progress", "log_every", "tensorboard", "checkpoint_every", "num_devices")


class TrainState(NamedTuple):
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array


def resolve(spec: Any, seed: int) -> genotypes.Genotype:
  """The genotype `spec` names; ``"random"`` draws one uniformly with `seed`. Raises GenotypeError."""
  if isinstance(spec, str) and spec.strip().lower() == "random":
    g = genotypes.random_genotype(np.random.default_rng(seed))
  else:
    if spec is None or (isinstance(spec, str) and not spec.strip()):
      raise genotypes.GenotypeError("config.genotype is empty: give a registry name (e.g. DARTS_V2), a "
                                    "genotype.json/.txt path, Genotype(...) text or 'random'")
    g = genotypes.resolve_genotype(spec.strip() if isinstance(spec, str) else spec)
  return genotypes.validate(genotypes.canonical(g), primitives=tuple(ops.OPS))


def _lr_at(config, epoch: int) -> float:
  return float(bilevel.cosine_lr(config.lr, config.lr_min, config.epochs, 1)(epoch))


def _drop_prob_at(config, epoch: int) -> float:
  return config.drop_path_prob * epoch / config.epochs


def optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, L2 weight decay added to the clipped gradient), as `torch.optim.SGD` in the reference."""
  lr = bilevel.cosine_lr(config.lr, config.lr_min, config.epochs, steps_per_epoch)
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.add_decayed_weights(config.weight_decay),
                     optax.trace(decay=config.momentum, nesterov=False),
                     optax.scale_by_learning_rate(lr))


def _xent(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def make_train_step(net_cfg: networks.NetworkConfig, tx, *, epochs: int, steps_per_epoch: int,
                    drop_path_prob: float, auxiliary_weight: float, shardings=None):
  """A jitted ``(state, batch) -> (state, metrics)`` that donates `state`; `shardings` = (state's, batch's),
  e.g. `parallel.Layout.step_shardings()`, runs it data-parallel on that mesh."""
  def step_fn(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    if drop_path_prob > 0:
      epoch = (state.step // steps_per_epoch).astype(jnp.float32)
      p_drop = drop_path_prob * epoch / epochs
    else:
      p_drop = 0.0

    def loss_fn(params):
      logits, aux, new_stats = networks.apply(params, state.batch_stats, batch["image"], net_cfg, train=True,
                                              rng=key, drop_path_prob=p_drop)
      loss = _xent(logits, batch["label"])
      total = loss
      aux_loss = jnp.zeros(())
      if aux is not None:
        aux_loss = _xent(aux, batch["label"])
        total = loss + auxiliary_weight * aux_loss
      return total, (loss, aux_loss, logits, new_stats)

    (total, (loss, aux_loss, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    metrics = {"loss": loss, "aux_loss": aux_loss, "acc": acc, "grad_norm": grad_norm, "finite": finite}
    return TrainState(params, new_stats, opt_state, state.step + 1, state.rng), metrics

  return parallel.jit_step(step_fn, shardings, batches=1)


def make_eval_step(net_cfg: networks.NetworkConfig, out_sharding=None):
  """A jitted ``(params, batch_stats, batch) -> (summed loss, correct, count)`` over a masked batch."""
  def eval_fn(params, batch_stats, batch):
    logits, _, _ = networks.apply(params, batch_stats, batch["image"], net_cfg, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    m = batch["mask"]
    return jnp.sum(losses * m), jnp.sum(correct * m), jnp.sum(m)
  return jax.jit(eval_fn) if out_sharding is None else jax.jit(eval_fn, out_shardings=out_sharding)


def evaluate(eval_fn, state: TrainState, dataset, batch_size: int, mean, std, put=lambda b: b):
  """Mean loss and accuracy on every example of `dataset` (running BatchNorm statistics)."""
  tot_loss = tot_correct = count = 0.0
  for batch in data_lib.eval_batches(dataset, batch_size, mean=mean, std=std):
    l, c, n = parallel.host(eval_fn(state.params, state.batch_stats, put(batch)))
    tot_loss += float(l)
    tot_correct += float(c)
    count += float(n)
  return tot_loss / max(count, 1), tot_correct / max(count, 1)


def _augmentation(config):
  aug = bool(config.get("augment", True))
  cutout = int(config.get("cutout", 0) or 0)
  if not aug and not cutout:
    return False
  return data_lib.Augmentation(pad=4 if aug else 0, flip=aug and bool(config.get("flip", True)), cutout=cutout)


def _check_config(config):
  if config.epochs < 1:
    raise ValueError(f"epochs={config.epochs} must be positive")
  if config.batch_size < 1:
    raise ValueError(f"batch_size={config.batch_size} must be positive")
  if not 0.0 <= config.drop_path_prob < 1.0:
    raise ValueError(f"drop_path_prob={config.drop_path_prob} must be in [0, 1)")
  if config.log_every < 1:
    raise ValueError(f"log_every={config.log_every} must be positive")


def _load_data(config):
  """(train, test, mean, std) of the config's dataset: its subsets, and the training set's channel stats."""
  train = data_lib.load_dataset(config.dataset, "train", config.get("data_dir") or None)
  if config.get("subset"):
    train = data_lib.subset(train, int(config.subset), seed=config.seed)
  test = data_lib.load_dataset(config.dataset, "test", config.get("data_dir") or None)
  if config.get("test_examples"):
    test = data_lib.subset(test, int(config.test_examples), seed=config.seed)
  if len(train) < config.batch_size:
    raise data_lib.DataError(f"the training set has {len(train)} examples, fewer than "
                             f"batch_size={config.batch_size}; lower batch_size or use more data")
  return (train, test) + tuple(data_lib.channel_stats(train.images))


def _network_config(config, genotype, train) -> networks.NetworkConfig:
  h, w, c = train.image_shape
  net_cfg = networks.NetworkConfig(genotype=genotype, C=config.model.C, num_classes=train.num_classes,
                                   layers=config.model.layers, auxiliary=bool(config.auxiliary), in_channels=c,
                                   kind="cifar", dw_impl=config.get("dw_impl", "auto") or "auto")
  networks.check_input(net_cfg, (1, h, w, c))
  return net_cfg


def _batches(config, train, mean, std, start: int, layout):
  """The training batches from step `start` on (the iterator carries over its own epochs), each process
  reading its rows of every global batch."""
  rows = layout.rows(config.batch_size) if jax.process_count() > 1 else None
  it = data_lib.BatchIterator(train, config.batch_size, augment=_augmentation(config), seed=config.seed, mean=mean,
                              std=std, start=(0, start), rows=rows)
  return data_lib.prefetch(it, size=2, device_put=layout.put_batch if layout.num_devices > 1 else True)


class _Records:
  """The retraining's metrics records: each logged step's, and each epoch's (training means since the last
  epoch, the schedule, and every ``eval_every`` epochs and at the end the test evaluation)."""

  def __init__(self, config, log, steps_per_epoch: int, total_steps: int, test_eval):
    self.config, self.log, self.steps_per_epoch, self.total_steps = config, log, steps_per_epoch, total_steps
    self.test_eval, self.sums = test_eval, []
    self.last = {"test_loss": None, "test_acc": None}

  def on_log(self, step, fetched):
    self.sums.extend((float(m["loss"]), float(m["acc"])) for m in fetched)
    self.log.write(step, loop.step_record(fetched, "train", (step - 1) // self.steps_per_epoch,
                                          () if self.config.auxiliary else ("aux_loss",)))

  def on_epoch(self, step, epoch, state, seconds, epoch_steps, elapsed):
    config = self.config
    mean_of = lambda i: sum(x[i] for x in self.sums) / max(len(self.sums), 1)
    record = {"phase": "epoch", "epoch": epoch, "train_loss": mean_of(0), "train_acc": mean_of(1),
              "lr": _lr_at(config, epoch), "drop_path_prob": _drop_prob_at(config, epoch),
              "seconds_per_step": seconds / max(epoch_steps, 1), "elapsed": elapsed}
    self.sums.clear()
    if (epoch + 1) % int(config.get("eval_every") or 1) == 0 or step == self.total_steps:
      self.last = dict(zip(("test_loss", "test_acc"), self.test_eval(state)))
      record.update(self.last)
    self.log.write(step, record)
    return {"test_acc": f"{self.last['test_acc']:.4f}"} if self.last["test_acc"] is not None else None


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) the network `config` describes in `workdir`; returns the summary it exports."""
  _check_config(config)
  genotype = resolve(config.genotype, config.seed)  # bad genotypes fail before anything is written
  layout = parallel.make_layout(int(config.get("num_devices") or 0))
  mesh_run, eval_bs = layout.num_devices > 1, int(config.get("eval_batch_size") or config.batch_size)
  layout.check_batch_size(config.batch_size)
  layout.check_batch_size(eval_bs, "eval_batch_size")
  wd.prepare(workdir, config.to_dict(), ignore=RESUMABLE_KEYS, write=layout.is_main)
  try:
    train, test, mean, std = _load_data(config)
    net_cfg = _network_config(config, genotype, train)
    steps_per_epoch = config.get("steps_per_epoch") or len(train) // config.batch_size
    total_steps, tx = config.epochs * steps_per_epoch, optimizer(config, steps_per_epoch)
    k_init, k_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    params, batch_stats = networks.init(k_init, net_cfg)
    state = TrainState(params, batch_stats, tx.init(params), jnp.zeros((), jnp.int32), k_rng)
    ckpt = wd.Checkpoints(workdir)
    if (ckpt.latest_step() or 0) >= total_steps and os.path.exists(os.path.join(workdir, "summary.json")):
      ckpt.close()
      with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)
    state, start, elapsed = ckpt.restore_or_init(layout.put_state(state) if mesh_run else state,
                                                 rebuild=lambda s: TrainState(*s))
    log = wd.MetricsLog(workdir, resume_step=start, tensorboard=config.get("tensorboard", True),
                        enabled=layout.is_main)
    step_fn = make_train_step(net_cfg, tx, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                              drop_path_prob=float(config.drop_path_prob),
                              auxiliary_weight=float(config.auxiliary_weight),
                              shardings=layout.step_shardings() if mesh_run else None)
    eval_fn = make_eval_step(net_cfg, layout.replicated if mesh_run else None)
    put_eval = layout.put_whole_batch if mesh_run else (lambda b: b)
    records = _Records(config, log, steps_per_epoch, total_steps,
                       lambda st: evaluate(eval_fn, st, test, eval_bs, mean, std, put_eval))
    check = lambda pending, at, good: wd.fetch_finite(pending, at, good, ckpt.directory, "gradients at retrain",
                                                      lower={"lr": config.lr})
    batches = _batches(config, train, mean, std, start, layout) if start < total_steps else None
    state, elapsed = loop.run(
        state, lambda st, i, b: step_fn(st, b), batches,
        loop.Hooks(ckpt.save_with_elapsed, check, records.on_log, records.on_epoch),
        start=start, total_steps=total_steps, steps_per_epoch=steps_per_epoch, log_every=config.log_every,
        elapsed=elapsed, checkpoint_every=int(config.get("checkpoint_every") or 0), directory=ckpt.directory,
        progress="retrain" if config.get("progress", True) and layout.is_main else None,
        close=(log.close, ckpt.close))
    last = records.last if records.last["test_acc"] is not None else dict(  # finished, killed before the summary
        zip(("test_loss", "test_acc"), evaluate(eval_fn, state, test, eval_bs, mean, std, put_eval)))
    parallel.check_same_on_all_processes(jax.tree.leaves(state.params)[:4], repr(last), "weights or test score")
    return export(config, workdir, genotype, networks.count_params(params), int(parallel.host(state.step)),
                  elapsed, last, len(train), len(test), layout)
  finally:
    wd.unlock(workdir)


def export(config, workdir, genotype, num_params, steps, elapsed, last, train_examples, test_examples, layout):
  """Writes the genotype, its cell pictures and the summary (process 0)."""
  text = genotypes.to_text(genotype)
  if not layout.is_main:
    return {"genotype": text, "test_acc": last["test_acc"], "num_params": num_params, "train_seconds": elapsed}
  exports.write_architecture(workdir, genotype, DARTS_SPACE)
  DARTS_SPACE.plot_arch(genotype, workdir)
  summary = {"dataset": config.dataset, "genotype": text,
             "genotype_spec": str(config.genotype), "seed": config.seed,
             "test_acc": last["test_acc"], "test_loss": last["test_loss"], "num_params": num_params,
             "train_seconds": elapsed, "epochs": config.epochs, "steps": steps,
             "train_examples": train_examples, "test_examples": test_examples,
             "num_devices": layout.num_devices, "num_processes": jax.process_count(), "versions": wd.versions(),
             "code_version": wd.code_version()}
  wd.write_json(os.path.join(workdir, "summary.json"), summary)
  return json.loads(json.dumps(wd._jsonable(summary)))  # pylint: disable=protected-access
