"""The in-memory dataset split every loader returns, and the one-line error for user-facing data problems."""
from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
  """A user-facing data problem (missing files, bad format, unknown name); the message is one line."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One split of an image-classification dataset, in host memory.

  Attributes:
    images: uint8 [N, H, W, C].
    labels: int32 [N], in ``[0, num_classes)``.
    num_classes: number of classes of the dataset (not only of those present in this split).
    name: the name it was loaded by.
    class_names: optional human-readable class names, indexed by label.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  class_names: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise DataError(f"dataset {self.name!r}: images must be uint8 [N,H,W,C], got {self.images.dtype} "
                      f"{self.images.shape}")
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise DataError(f"dataset {self.name!r}: labels must be int32 [{len(self.images)}], got "
                      f"{self.labels.dtype} {self.labels.shape}")
    if self.num_classes < 1:
      raise DataError(f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C)."""
    return tuple(self.images.shape[1:])
