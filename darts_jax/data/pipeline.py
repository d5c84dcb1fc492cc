"""Splits, resumable training batches, padded evaluation batches and background prefetching.

`BatchIterator` is resumable: the order of an epoch and all of its augmentation draws depend only on
``(seed, epoch)``, so the batches from position ``(epoch, step)`` on are the same whether the run was
interrupted there or not. A trainer that prefetches should checkpoint the position of the batches it has
consumed (e.g. ``divmod(global_step, steps_per_epoch)``), not ``state()`` of the iterator, which runs ahead.
"""
from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from darts_jax.data.sources import DataError, Dataset
from darts_jax.data.transforms import Augmentation, apply_augmentation, channel_stats, normalize
from darts_jax.data.transforms import sample_augmentation

Batch = dict[str, np.ndarray]
DataLike = Dataset | tuple[np.ndarray, np.ndarray]


def _arrays(data: DataLike) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(data, Dataset):
    return data.images, data.labels
  images, labels = data
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
    raise DataError(f"expected uint8 [N,H,W,C] images and [N] labels, got {images.dtype} {images.shape} and "
                    f"{labels.shape}")
  return images, labels


def _check_indices(indices: np.ndarray | None, n: int) -> np.ndarray:
  if indices is None:
    return np.arange(n)
  indices = np.asarray(indices)
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise DataError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
  if len(indices) and (indices.min() < 0 or indices.max() >= n):
    raise DataError(f"indices must lie in [0, {n}), found [{indices.min()}, {indices.max()}]")
  return indices


def search_split(data: Dataset | int, train_portion: float = 0.5, seed: int = 0,
                 shuffle: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Splits a training set into a part for the weights and a part for the architecture, as DARTS does.

  Args:
    data: the training `Dataset`, or its number of examples.
    train_portion: fraction for the weights; the first ``floor(train_portion * N)`` indices.
    seed: permutation seed, used only when `shuffle`.
    shuffle: permute the indices before splitting (the reference does not).

  Returns:
    (train_idx, val_idx), disjoint int64 arrays covering every index once.
  """
  n = data if isinstance(data, int) else len(data)
  if not 0.0 < train_portion < 1.0:
    raise DataError(f"train_portion must lie in (0, 1), got {train_portion}")
  indices = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
  split = int(np.floor(train_portion * n))
  if split == 0 or split == n:
    raise DataError(f"train_portion={train_portion} of {n} examples leaves one side of the split empty")
  return indices[:split].astype(np.int64), indices[split:].astype(np.int64)


def take(dataset: Dataset, indices: np.ndarray) -> Dataset:
  """The examples of `dataset` at `indices`, as a new `Dataset`."""
  indices = _check_indices(indices, len(dataset))
  return Dataset(dataset.images[indices], dataset.labels[indices], dataset.num_classes, dataset.name,
                 dataset.class_names)


def subset_indices(labels: np.ndarray, n: int, seed: int = 0, stratified: bool = True) -> np.ndarray:
  """Deterministically picks `n` indices, sorted; stratified keeps the class proportions (up to rounding)."""
  total = len(labels)
  if n <= 0:
    raise DataError(f"subset size must be positive, got {n}")
  if n >= total:
    return np.arange(total)
  if not stratified:
    return np.arange(n)
  order = np.random.default_rng(seed).permutation(total)
  shuffled = np.asarray(labels)[order]
  counts = np.bincount(shuffled)
  rank = np.empty(total, np.int64)
  sort = np.argsort(shuffled, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank[sort] = np.arange(total) - np.repeat(starts, counts)
  key = (rank + 0.5) / counts[shuffled]
  return np.sort(order[np.argsort(key, kind="stable")[:n]])


def subset(dataset: Dataset, n: int, seed: int = 0, stratified: bool = True) -> Dataset:
  """A deterministic `n`-example subset for smoke runs: stratified by label (default) or the first `n`."""
  return take(dataset, subset_indices(dataset.labels, n, seed, stratified))


class BatchIterator:
  """Infinite (or `num_epochs`-long), resumable iterator of training batches over an index set.

  Each item is ``{'image': float32 [B,H,W,C], 'label': int32 [B]}``. The position is ``(epoch, step)``;
  epoch ``e`` is laid out by ``np.random.default_rng([seed, e])``, which draws the permutation (if `shuffle`)
  and then the augmentation parameters of each position in the epoch.
  """

  def __init__(self, data: DataLike, batch_size: int, indices: np.ndarray | None = None, *,
               shuffle: bool = True, augment: bool | Augmentation = False, seed: int = 0,
               mean: np.ndarray | None = None, std: np.ndarray | None = None, drop_remainder: bool = True,
               num_epochs: int | None = None, start: Mapping[str, int] | tuple[int, int] = (0, 0),
               rows: tuple[int, int] | None = None):
    """Creates the iterator.

    Args:
      data: a `Dataset` or (uint8 images, labels).
      batch_size: examples per batch.
      indices: the examples to iterate over (default: all).
      shuffle: permute the indices anew each epoch.
      augment: False, True (crop with pad 4 + flip) or an `Augmentation`.
      seed: a non-negative integer; use different seeds for iterators that must not be correlated.
      mean: per-channel mean in [0, 1] units (default: `channel_stats` of ``data``, meant to be the
        training split).
      std: per-channel standard deviation, as `mean`.
      drop_remainder: drop the last incomplete batch of each epoch (keeps one shape for jit).
      num_epochs: stop after this many epochs (None: never).
      start: the position to start from, ``(epoch, step)`` or a `state()` dict.
      rows: ``[start, stop)``: yield only these rows of each global batch of `batch_size` (one process's
        part of a multi-host batch, `parallel.Layout.rows`); the rows of all processes make the batch an
        iterator without `rows` yields.
    """
    self._images, self._labels = _arrays(data)
    self._indices = _check_indices(indices, len(self._labels))
    if batch_size <= 0:
      raise DataError(f"batch_size must be positive, got {batch_size}")
    if seed < 0:
      raise DataError(f"seed must be a non-negative integer, got {seed}")
    self.batch_size = int(batch_size)
    self.shuffle = shuffle
    self.seed = int(seed)
    self.drop_remainder = drop_remainder
    self.num_epochs = num_epochs
    if augment is True:
      augment = Augmentation()
    self.augmentation: Augmentation | None = augment or None
    if mean is None or std is None:
      mean, std = channel_stats(self._images)
    self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    n = len(self._indices)
    self.steps_per_epoch = n // self.batch_size if drop_remainder else -(-n // self.batch_size)
    if self.steps_per_epoch == 0:
      raise DataError(f"{n} examples make no batch of {self.batch_size}: lower batch_size or pass "
                      "drop_remainder=False")
    self._plan_epoch, self._plan = -1, None
    self.rows = (0, self.batch_size) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= self.rows[0] < self.rows[1] <= self.batch_size:
      raise DataError(f"rows {self.rows} do not lie within a batch of {self.batch_size}")
    self.set_state(start)

  @property
  def epoch(self) -> int:
    return self._epoch

  @property
  def step(self) -> int:
    return self._step

  @property
  def num_examples(self) -> int:
    return len(self._indices)

  def state(self) -> dict[str, int]:
    """The position of the next batch, ``{'epoch': e, 'step': s}`` with ``0 <= s < steps_per_epoch``."""
    return {"epoch": self._epoch, "step": self._step}

  def set_state(self, state: Mapping[str, int] | tuple[int, int]) -> None:
    """Moves to a position; a step past the end of an epoch carries into the following epochs."""
    epoch, step = (state["epoch"], state["step"]) if isinstance(state, Mapping) else state
    if epoch < 0 or step < 0:
      raise DataError(f"iterator position must be non-negative, got epoch={epoch}, step={step}")
    self._epoch, self._step = divmod(int(epoch) * self.steps_per_epoch + int(step), self.steps_per_epoch)

  def iterator_at(self, epoch: int, step: int = 0) -> BatchIterator:
    """A new iterator with the same data and settings, starting at ``(epoch, step)``."""
    clone = object.__new__(BatchIterator)
    clone.__dict__.update(self.__dict__)
    clone.set_state((epoch, step))
    return clone

  def _epoch_plan(self, epoch: int):
    if epoch != self._plan_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      n = len(self._indices)
      order = self._indices[rng.permutation(n)] if self.shuffle else self._indices
      params = None
      if self.augmentation is not None:
        _, h, w, _ = self._images.shape
        params = sample_augmentation(rng, n, h, w, self.augmentation)
      self._plan_epoch, self._plan = epoch, (order, params)
    return self._plan

  def batch_at(self, epoch: int, step: int) -> Batch:
    """The batch at a position, without moving the iterator."""
    if not 0 <= step < self.steps_per_epoch:
      raise DataError(f"step must lie in [0, {self.steps_per_epoch}), got {step}")
    order, params = self._epoch_plan(epoch)
    positions = slice(step * self.batch_size + self.rows[0], step * self.batch_size + self.rows[1])
    idx = order[positions]
    images = self._images[idx]
    if params is None:
      images = normalize(images, self.mean, self.std)
    else:
      images = apply_augmentation(images, params.take(positions), self.augmentation, self.mean, self.std)
    return {"image": images, "label": self._labels[idx].astype(np.int32)}

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Batch:
    if self.num_epochs is not None and self._epoch >= self.num_epochs:
      raise StopIteration
    batch = self.batch_at(self._epoch, self._step)
    self.set_state((self._epoch, self._step + 1))
    return batch

  def epoch_batches(self) -> Iterator[Batch]:
    """The remaining batches of the current epoch; afterwards the iterator is at the next epoch's start."""
    epoch = self._epoch
    while self._epoch == epoch and (self.num_epochs is None or epoch < self.num_epochs):
      yield next(self)


def eval_batches(data: DataLike, batch_size: int, *, mean: np.ndarray, std: np.ndarray,
                 indices: np.ndarray | None = None) -> Iterator[Batch]:
  """Every example once, in order, without augmentation, in batches of one shape.

  Args:
    data: a `Dataset` or (uint8 images, labels).
    batch_size: examples per batch; the last batch is padded with zero images.
    mean: per-channel mean of the training split, in [0, 1] units.
    std: per-channel standard deviation of the training split.
    indices: the examples to evaluate (default: all).

  Yields:
    ``{'image': float32 [B,H,W,C], 'label': int32 [B], 'mask': float32 [B]}``, mask 1 for real examples.
  """
  images, labels = _arrays(data)
  indices = _check_indices(indices, len(labels))
  if batch_size <= 0:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  for start in range(0, len(indices), batch_size):
    idx = indices[start:start + batch_size]
    real = len(idx)
    image = normalize(images[idx], mean, std)
    label = labels[idx].astype(np.int32)
    mask = np.ones(batch_size, np.float32)
    if real < batch_size:
      image = np.concatenate([image, np.zeros((batch_size - real,) + image.shape[1:], np.float32)])
      label = np.concatenate([label, np.zeros(batch_size - real, np.int32)])
      mask[real:] = 0.0
    yield {"image": image, "label": label, "mask": mask}


_END = object()


class _Raised:

  def __init__(self, error: BaseException):
    self.error = error


def prefetch(iterable: Iterable[Any], size: int = 2, device_put: bool | Callable[[Any], Any] = True
             ) -> Iterator[Any]:
  """Runs `iterable` in a background thread, `size` items ahead, yielding its items in order.

  An exception raised by `iterable` is re-raised here. When the consumer stops (the generator is closed,
  explicitly or by garbage collection), the thread stops at its next item and closes `iterable` if it can.

  Args:
    iterable: the host pipeline, e.g. a `BatchIterator`.
    size: queue capacity.
    device_put: apply `jax.device_put` (or this function, e.g. `parallel.Layout.put_batch`) to each item in
      the thread, overlapping the transfer with compute.

  Yields:
    The items of `iterable`.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")
  put_fn = device_put if callable(device_put) else None
  if device_put is True:
    import jax  # pylint: disable=g-import-not-at-top
    put_fn = jax.device_put
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def offer(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    source = iter(iterable)
    try:
      for item in source:
        if stop.is_set() or not offer(put_fn(item) if put_fn else item):
          return
      offer(_END)
    except BaseException as e:  # pylint: disable=broad-except
      offer(_Raised(e))
    finally:
      close = getattr(source, "close", None)
      if stop.is_set() and callable(close):
        close()

  thread = threading.Thread(target=produce, name=f"darts_jax-prefetch-{next(_thread_ids)}", daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _END:
        return
      if isinstance(item, _Raised):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join(timeout=1.0)


_thread_ids = itertools.count()


def _block(item: Any) -> None:
  if "jax" in sys.modules:
    sys.modules["jax"].block_until_ready(item)


def measure_throughput(iterator: Iterable[Any], n: int, warmup: int = 1) -> float:
  """Consumes `warmup` then `n` items of `iterator` and returns items (batches) per second."""
  if n <= 0:
    raise ValueError(f"n must be positive, got {n}")
  it = iter(iterator)
  for _ in range(warmup):
    _block(next(it))
  start = time.perf_counter()
  count, item = 0, None
  for item in itertools.islice(it, n):
    count += 1
  _block(item)
  elapsed = time.perf_counter() - start
  if count == 0:
    raise ValueError("the iterator yielded no items to time")
  return count / elapsed
