"""Host-side (numpy) image statistics, normalization and DARTS-style augmentation.

Augmentation follows the DARTS reference: random crop after zero padding, random horizontal flip, conversion to
[0, 1], per-channel normalization, then optionally Cutout (one square of side L, centre uniform over the image,
clipped at the borders, zeroed in normalized space). Randomness is drawn separately from its application
(`sample_augmentation` / `apply_augmentation`) so that a pipeline can draw a whole epoch's parameters at once
and reproduce any batch from its position alone.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

_STATS_CHUNK_VALUES = 1 << 22


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) standard deviation of uint8 NHWC images, in [0, 1] units.

  Args:
    images: uint8 [N, H, W, C], normally the training split.

  Returns:
    (mean, std), each float32 [C].
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"channel_stats needs non-empty [N,H,W,C] images, got shape {images.shape}")
  c = images.shape[-1]
  total, total_sq = np.zeros(c, np.float64), np.zeros(c, np.float64)
  rows = max(1, _STATS_CHUNK_VALUES // (images[0].size or 1))
  for start in range(0, len(images), rows):
    chunk = images[start:start + rows].reshape(-1, c).astype(np.float64)
    total += chunk.sum(axis=0)
    total_sq += np.square(chunk).sum(axis=0)
  count = images.size // c
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """``(x / 255 - mean) / std`` as float32, for uint8 [..., W, C] images."""
  images = np.asarray(images)
  c = images.shape[-1]
  mean = np.broadcast_to(np.asarray(mean, np.float32), (c,))
  std = np.broadcast_to(np.asarray(std, np.float32), (c,))
  scale, shift = np.float32(1.0 / 255.0) / std, mean / std
  if c > 1 and images.ndim >= 2:
    # Broadcasting over a short last axis is slow in numpy; tiling over (W, C) makes the inner loop long.
    w = images.shape[-2]
    out = images.reshape(-1, w * c).astype(np.float32)
    out *= np.tile(scale, w)
    out -= np.tile(shift, w)
    return out.reshape(images.shape)
  out = images.astype(np.float32)
  out *= scale
  out -= shift
  return out


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Which augmentations to apply.

  Attributes:
    pad: zero padding on each side before the random crop back to the original size (0: no crop).
    flip: random horizontal flip with probability 1/2 (turn off for digits and other chiral images).
    cutout: side length of the Cutout square (0: off; DARTS retraining uses 16 on CIFAR-10).
  """
  pad: int = 4
  flip: bool = True
  cutout: int = 0

  def __post_init__(self):
    if self.pad < 0 or self.cutout < 0:
      raise ValueError(f"pad and cutout must be >= 0, got pad={self.pad}, cutout={self.cutout}")


class AugmentationParams(NamedTuple):
  """Per-image random draws: crop offsets in the padded image, flip flags and Cutout centres."""
  dy: np.ndarray
  dx: np.ndarray
  flip: np.ndarray
  cy: np.ndarray
  cx: np.ndarray

  def take(self, index) -> AugmentationParams:
    return AugmentationParams(*(a[index] for a in self))


def sample_augmentation(rng: np.random.Generator, n: int, height: int, width: int,
                        aug: Augmentation) -> AugmentationParams:
  """Draws the augmentation parameters of `n` images, always consuming `rng` the same way."""
  dy = rng.integers(0, 2 * aug.pad + 1, size=n)
  dx = rng.integers(0, 2 * aug.pad + 1, size=n)
  flip = rng.random(n) < 0.5
  cy = rng.integers(0, height, size=n)
  cx = rng.integers(0, width, size=n)
  if not aug.flip:
    flip = np.zeros(n, bool)
  return AugmentationParams(dy, dx, flip, cy, cx)


def apply_augmentation(images: np.ndarray, params: AugmentationParams, aug: Augmentation,
                       mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Crops, flips, normalizes and cuts out a batch of uint8 [B, H, W, C] images into float32.

  Args:
    images: uint8 [B, H, W, C].
    params: the draws for these B images (from `sample_augmentation`).
    aug: which augmentations to apply.
    mean: per-channel mean in [0, 1] units.
    std: per-channel standard deviation in [0, 1] units.

  Returns:
    float32 [B, H, W, C].
  """
  _, h, w, _ = images.shape
  p = aug.pad
  cropped = images
  if p or params.flip.any():
    # Per-image slicing beats fancy-index gathers and np.where by several times for batches this size.
    cropped = np.zeros_like(images)
    offsets = zip((params.dy - p).tolist(), (params.dx - p).tolist(), params.flip.tolist())
    for i, (y0, x0, flip) in enumerate(offsets):
      ys, ye, xs, xe = max(0, y0), min(h, y0 + h), max(0, x0), min(w, x0 + w)
      if flip:
        cropped[i, ys - y0:ye - y0, w - (xe - x0):w - (xs - x0)] = images[i, ys:ye, xs:xe][:, ::-1]
      else:
        cropped[i, ys - y0:ye - y0, xs - x0:xe - x0] = images[i, ys:ye, xs:xe]
  out = normalize(cropped, mean, std)
  if aug.cutout:
    half = aug.cutout // 2
    for i, (cy, cx) in enumerate(zip(params.cy.tolist(), params.cx.tolist())):
      out[i, max(0, cy - half):min(h, cy + half), max(0, cx - half):min(w, cx + half)] = 0.0
  return out


def augment(images: np.ndarray, rng: np.random.Generator, mean: np.ndarray, std: np.ndarray,
            aug: Augmentation = Augmentation()) -> np.ndarray:
  """Draws parameters from `rng` and augments + normalizes a uint8 [B, H, W, C] batch into float32."""
  _, h, w, _ = images.shape
  return apply_augmentation(images, sample_augmentation(rng, len(images), h, w, aug), aug, mean, std)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [N, H, W, C] images resized to ``size x size`` with bilinear (antialiased) filtering, as uint8.

  For sizing a search to a CPU (e.g. Fashion-MNIST's 28x28 to 16x16); the images are resized once, on the
  host, before statistics and batching. A no-op when the images already have that size.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top  # Pillow comes with matplotlib; loaded only here.
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"resize_images needs [N,H,W,C] images, got shape {images.shape}")
  if size < 1:
    raise ValueError(f"image size must be positive, got {size}")
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  out = np.empty((n, size, size, c), np.uint8)
  for i in range(n):
    for ch in range(c):
      img = Image.fromarray(images[i, :, :, ch].astype(np.float32))
      out[i, :, :, ch] = np.clip(np.rint(np.asarray(img.resize((size, size), Image.BILINEAR))), 0, 255)
  return out
