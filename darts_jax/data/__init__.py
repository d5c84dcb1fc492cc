"""Datasets for architecture search and retraining: loading by name, splits, augmentation and batching.

Images stay on the host as uint8 NHWC numpy arrays with int32 labels; the batches handed to JAX are float32
NHWC, normalized with the training split's per-channel statistics. Typical use::

  train = data.load_dataset("fashion_mnist", "train")
  mean, std = data.channel_stats(train.images)
  w_idx, a_idx = data.search_split(train, 0.5)
  w_batches = data.BatchIterator(train, 64, w_idx, augment=True, seed=0, mean=mean, std=std)
  a_batches = data.BatchIterator(train, 64, a_idx, augment=True, seed=1, mean=mean, std=std)
  for batch in data.prefetch(w_batches): ...
"""
from darts_jax.data.pipeline import Batch
from darts_jax.data.pipeline import BatchIterator
from darts_jax.data.pipeline import eval_batches
from darts_jax.data.pipeline import measure_throughput
from darts_jax.data.pipeline import prefetch
from darts_jax.data.pipeline import search_split
from darts_jax.data.pipeline import subset
from darts_jax.data.pipeline import subset_indices
from darts_jax.data.pipeline import take
from darts_jax.data.dataset import DataError
from darts_jax.data.dataset import Dataset
from darts_jax.data.sources import fashion_mnist_dirs
from darts_jax.data.sources import load_dataset
from darts_jax.data.sources import load_idx_pair
from darts_jax.data.sources import read_idx
from darts_jax.data.sources import to_uint8_images
from darts_jax.data.transforms import Augmentation
from darts_jax.data.transforms import AugmentationParams
from darts_jax.data.transforms import apply_augmentation
from darts_jax.data.transforms import augment
from darts_jax.data.transforms import channel_stats
from darts_jax.data.transforms import normalize
from darts_jax.data.transforms import resize_images
from darts_jax.data.transforms import sample_augmentation

__all__ = [
    "Augmentation", "AugmentationParams", "Batch", "BatchIterator", "DataError", "Dataset",
    "apply_augmentation", "augment", "channel_stats", "eval_batches", "fashion_mnist_dirs", "load_dataset",
    "load_idx_pair", "measure_throughput", "normalize", "prefetch", "read_idx", "resize_images", "sample_augmentation",
    "search_split", "subset", "subset_indices", "take", "to_uint8_images",
]
