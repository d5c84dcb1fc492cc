"""Searching and retraining on a device mesh, on one host or many, with JAX's own runtime.

A `Layout` is a `jax.sharding.Mesh` with a ``seed`` and a ``data`` axis and the shardings a step uses:

* data parallelism: each batch is sharded along ``data``; the training state (weights, α, both optimizer
  states, step, rng) is replicated. The jitted step then computes every pass's gradient over the global
  batch (XLA inserts the all-reduces), and BatchNorm's batch statistics are those of the global batch, so N
  devices give the numbers of one device with the same global batch. `per_device_bn` instead computes them
  per device, as PyTorch's DataParallel does.
* many seeds (`steps.make_multi_seed_step`): the stacked states and batches are sharded along ``seed``.
* many hosts: `initialize` starts `jax.distributed` (one process per host, or per GPU); every process reads
  only its rows of each global batch (`Layout.rows`) and `Layout.put_batch` assembles the global array.
  `Layout.is_main` is the process that writes logs and exports; `check_same_on_all_processes` verifies at
  the end that every process holds the same result.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
SEED = "seed"


class ProcessMismatch(RuntimeError):
  """The processes of a multi-host run ended with different results."""


def is_main() -> bool:
  """Whether this is process 0, the one that writes logs and exports."""
  return jax.process_index() == 0


def jit_step(fn, shardings=None, batches: int = 1, donate: bool = True, **kwargs):
  """jit of a step `(state, *batches) -> (state, metrics)` that donates its state; `shardings` = (state's,
  batch's), e.g. `Layout.step_shardings()`, places the state, the batches and the metrics (with the state's
  sharding) on a mesh."""
  if shardings is not None:
    state_sh, batch_sh = shardings
    kwargs.update(in_shardings=(state_sh,) + (batch_sh,) * batches, out_shardings=(state_sh, state_sh))
  return jax.jit(fn, donate_argnums=(0,) if donate else (), **kwargs)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Starts JAX's multi-controller runtime when a coordinator is given (before any other JAX call).

  Returns whether it was started. On CPU the processes talk through gloo collectives. Unset arguments
  (None, "", 0 processes) mean one process and do nothing.
  """
  if not coordinator_address and not num_processes and process_id is None:
    return False
  if not coordinator_address or not num_processes or process_id is None:
    raise ValueError("multi-process runs need all of --coordinator_address (host:port of process 0), "
                     "--num_processes and --process_id")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must lie in [0, --num_processes={num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes=int(num_processes), process_id=int(process_id))
  if jax.default_backend() == "cpu":
    # Measured with 2 processes on one host: executables from the persistent compilation cache computed
    # differently from freshly compiled ones (α 1e-4 apart after 6 steps) and a resumed run ended 1.4e-6 away
    # from an uninterrupted one; without the cache both runs equal the one-process result bit for bit.
    jax.config.update("jax_enable_compilation_cache", False)
  return True


@dataclasses.dataclass(frozen=True)
class Layout:
  """A (seed, data) device mesh and the shardings of states and batches on it; `stacked`: states and batches
  carry a leading seed axis (`steps.make_multi_seed_step`)."""
  mesh: Mesh
  stacked: bool = False

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA]

  @property
  def seed_size(self) -> int:
    return self.mesh.shape[SEED]

  @property
  def is_main(self) -> bool:
    return is_main()

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch(self) -> NamedSharding:
    """A batch's leading axis split over ``data`` (a multi-seed batch: its second axis)."""
    return NamedSharding(self.mesh, P(SEED, DATA) if self.stacked else P(DATA))

  @property
  def state(self) -> NamedSharding:
    """A training state: replicated, or its leading (seed) axis split over ``seed``."""
    return NamedSharding(self.mesh, P(SEED) if self.stacked else P())

  def step_shardings(self) -> Tuple[NamedSharding, NamedSharding]:
    """(state, batch) shardings for `steps.make_search_step` / `retrain.make_train_step`."""
    return self.state, self.batch

  def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
    if batch_size % self.data_size:
      raise ValueError(f"{what}={batch_size} does not divide over the {self.data_size} devices of the data "
                       f"axis; use a multiple of {self.data_size} or set --config.num_devices")

  def rows(self, batch_size: int) -> Tuple[int, int]:
    """[start, stop) of the rows of a global batch that this process's devices hold."""
    index_map = NamedSharding(self.mesh, P(DATA)).addressable_devices_indices_map((batch_size,))
    starts = sorted({idx[0].indices(batch_size)[:2] for idx in index_map.values()})
    start, stop = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != stop - start:
      raise ValueError("this process's devices do not hold one contiguous block of the batch; "
                       "order the devices of the mesh by process")
    return start, stop

  def put_batch(self, local_batch):
    """The global batch from this process's rows of it (`rows`); one process: its whole batch."""
    if jax.process_count() == 1:
      return jax.device_put(local_batch, self.batch)
    sharding = self.batch

    def put(x):
      x = np.asarray(x)
      shape = (x.shape[0] * jax.process_count(),) + x.shape[1:] if not self.stacked else None
      return jax.make_array_from_process_local_data(sharding, x, shape)
    return jax.tree.map(put, local_batch)

  def put_state(self, tree):
    """`tree` (the same values on every process) placed with the state's sharding."""
    sharding = self.state
    if jax.process_count() == 1:
      return jax.device_put(tree, sharding)

    def put(x):
      x = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(put, tree)

  def put_whole_batch(self, global_batch):
    """`put_batch` of a host batch that every process built whole (e.g. an evaluation batch)."""
    return self.put_batch(self.local_rows(global_batch))

  def local_rows(self, global_batch):
    """This process's rows of a host batch that every process built whole (e.g. an evaluation batch)."""
    if jax.process_count() == 1:
      return global_batch
    n = len(jax.tree.leaves(global_batch)[0])
    start, stop = self.rows(n)
    return jax.tree.map(lambda x: x[start:stop], global_batch)


def make_layout(num_devices: int = 0, seeds: int = 0) -> Layout:
  """A mesh of the first `num_devices` devices (0: all, over every process). ``seeds=S`` > 0: for S stacked
  searches, the ``seed`` axis as large as S and the device count allow (their greatest common divisor), the
  rest of the devices along ``data``; 0: one search, every device along ``data``."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"num_devices={n} but only {len(devices)} devices are visible; lower num_devices")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"num_devices={n}: a multi-process run uses all {len(devices)} devices; unset num_devices")
  if seeds < 0:
    raise ValueError(f"seeds={seeds} must be non-negative")
  seed_axis = math.gcd(seeds, n) if seeds else 1
  ordered = sorted(devices[:n], key=lambda d: (d.process_index, d.id))
  return Layout(Mesh(np.array(ordered).reshape(seed_axis, n // seed_axis), (SEED, DATA)), stacked=seeds > 0)


def bn_stats_apply(apply, mode: Optional[str], layout: Layout):
  """`apply` for the config's ``bn_stats``: "global" (or None; the statistics of the global batch) as it is,
  "device" through `per_device_bn`."""
  mode = mode or "global"
  if mode == "device":
    return per_device_bn(apply, layout)
  if mode != "global":
    raise ValueError(f"bn_stats={mode!r}: use 'global' (statistics of the global batch) or 'device'")
  return apply


def per_device_bn(apply, layout: Layout):
  """`apply(params, images, arch_weights)` with BatchNorm statistics of each device's shard of the batch
  (PyTorch DataParallel's numbers) instead of the global batch's: the network runs under `jax.shard_map`."""
  spec_batch = P(DATA)

  def fn(params, images, arch_weights):
    # check_vma=False: the network's loops carry fresh (unvarying) zeros; the replicated inputs' cotangents are
    # still summed over the devices.
    return jax.shard_map(apply, mesh=layout.mesh, in_specs=(P(), spec_batch, P()), out_specs=spec_batch,
                         check_vma=False)(params, images, arch_weights)
  return fn


def host(tree):
  """A replicated (or single-device) pytree on the host, from this process's own copy."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def check_same_on_all_processes(tree, text: str, what: str) -> None:
  """Raises `ProcessMismatch` unless every process holds process 0's arrays of `tree` and string `text`."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mine = [np.asarray(x) for x in jax.tree.leaves(host(tree))]
  digest = np.array([zlib.crc32(text.encode())], np.int64)
  theirs = multihost_utils.broadcast_one_to_all((mine, digest))
  same = int(theirs[1][0]) == int(digest[0]) and all(
      a.shape == b.shape and np.array_equal(a, b) for a, b in zip(mine, theirs[0]))
  flags = multihost_utils.process_allgather(np.array([same], np.int32))
  if not np.all(flags):
    bad = [i for i, f in enumerate(np.asarray(flags).reshape(-1)) if not f]
    raise ProcessMismatch(f"processes {bad} ended with a different {what} than process 0")


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)], np.int32))))
