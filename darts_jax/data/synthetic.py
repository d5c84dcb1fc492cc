"""Synthetic image tasks whose right architecture is known by construction, generated from a seed.

Each task is a two-class problem of single-channel uint8 images; `darts_jax.known_answer` derives which
candidate ops can solve it and checks that by training each op alone. Names are loaded as datasets with the
``synthetic:`` prefix (``synthetic:receptive_field``), their parameters given as `TaskParams` fields.

* ``receptive_field``: two lit pixels (255 on a black background), `distance` apart on both axes; the label is
  the pair's orientation, down-right (0) or down-left (1). The two classes are mirror images of each other, so
  an op commuting with the mirror (identity, pooling, zero) gives both classes the same pooled features, and
  so does an op whose receptive field never holds both pixels: it sees each pixel alone, wherever it lies.
* ``dark_pixels``: `pixels` isolated dark pixels on a grey (200) background; the label is their value, 0 or
  100. Both lie below the image mean, so after the per-channel normalization an op that starts with ReLU (every
  DARTS and NAS-Bench-201 convolution) maps both to 0, and max pooling returns the background around them;
  identity and average pooling see them.

The optional cue (``cue`` = p > 0) adds one pixel whose value, 96 or 160 in ``receptive_field`` and 230 or 255
in ``dark_pixels`` (above the background, so every op sees it), gives the label with probability p. It lies
at least `cue_distance` pixels (Chebyshev) from every signal pixel, so that no small window holds the cue and a
signal pixel at once: a cue inside the pair would let two stacked 3x3 kernels read the orientation from one
pixel and the cue. Every lit pixel keeps `margin` pixels from the border, out of reach of the largest kernel's
zero padding (9x9 by default: a 5x5 separable or dilated convolution).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Tuple

import numpy as np

from darts_jax.data.dataset import DataError, Dataset

TASKS = ("receptive_field", "dark_pixels")
PREFIX = "synthetic:"
CLASS_NAMES = {"receptive_field": ("down-right", "down-left"), "dark_pixels": ("black", "dark grey")}
_SPLIT_INDEX = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class TaskParams:
  """A synthetic task's parameters (the config block ``synthetic``).

  size: image side in pixels. distance: the lit pixels' offset on each axis (``receptive_field``).
  pixels: dark pixels per image (``dark_pixels``). cue: probability that the cue pixel gives the label (0: no
  cue; 0.5: a cue that says nothing). cue_distance: the cue's least Chebyshev distance to a signal pixel.
  margin: the lit pixels' least distance to the border. examples / test_examples: images in the train and
  test splits. seed: the generator's seed (the splits are drawn apart from it).
  """
  size: int = 24
  distance: int = 6
  pixels: int = 2
  cue: float = 0.0
  cue_distance: int = 5
  margin: int = 4
  examples: int = 4096
  test_examples: int = 1024
  seed: int = 0

  def check(self, task: str) -> None:
    if task not in TASKS:
      raise DataError(f"unknown synthetic task {task!r}; choose one of {', '.join(TASKS)}")
    if not 0.0 <= self.cue <= 1.0:
      raise DataError(f"synthetic.cue={self.cue} must be a probability in [0, 1] (0: no cue)")
    if min(self.examples, self.test_examples) < 1 or self.margin < 0 or self.seed < 0:
      raise DataError("synthetic.examples and test_examples must be positive, margin and seed non-negative")
    inner = self.size - 2 * self.margin
    if task == "receptive_field":
      if self.distance < 1 or inner <= self.distance:
        raise DataError(f"synthetic.distance={self.distance} does not fit a {self.size}x{self.size} image with "
                        f"margin {self.margin}; use distance < size - 2*margin = {inner}")
    elif self.pixels < 1 or inner < 2 * self.pixels:
      raise DataError(f"synthetic.pixels={self.pixels} isolated pixels do not fit a {self.size}x{self.size} "
                      f"image with margin {self.margin}")


def params_from(options: Optional[Mapping[str, object]]) -> TaskParams:
  """`TaskParams` from a config block or dict (unknown keys raise a one-line `DataError`)."""
  fields = {f.name for f in dataclasses.fields(TaskParams)}
  options = dict(options or {})
  unknown = sorted(set(options) - fields)
  if unknown:
    raise DataError(f"unknown synthetic task parameter(s) {', '.join(unknown)}; use {', '.join(sorted(fields))}")
  return TaskParams(**options)


def _cue_values(task: str) -> Tuple[int, int]:
  return (96, 160) if task == "receptive_field" else (230, 255)


def _far_from(pos, points, dist: int) -> bool:
  return all(max(abs(pos[0] - p[0]), abs(pos[1] - p[1])) >= dist for p in points)


def _place(rng: np.random.Generator, lo: int, hi: int, points, dist: int, what: str):
  """A uniform position in [lo, hi]² at Chebyshev distance >= dist from every point (rejection sampling)."""
  for _ in range(10_000):
    pos = tuple(int(v) for v in rng.integers(lo, hi + 1, size=2))
    if _far_from(pos, points, dist):
      return pos
  raise DataError(f"no room for the {what} in the image: use a larger synthetic.size or smaller distances")


def _signal(task: str, p: TaskParams, label: int, rng: np.random.Generator):
  """(positions, values) of the signal pixels of one example of `label`."""
  lo, hi = p.margin, p.size - 1 - p.margin
  if task == "receptive_field":
    d = p.distance
    y0, x0 = (int(v) for v in rng.integers(lo, hi - d + 1, size=2))
    pts = [(y0, x0), (y0 + d, x0 + d)] if label == 0 else [(y0, x0 + d), (y0 + d, x0)]
    return pts, [255, 255]
  pts = []
  for _ in range(p.pixels):
    pts.append(_place(rng, lo, hi, pts, 2, "dark pixels"))
  return pts, [(0, 100)[label]] * p.pixels


def generate(task: str, params: TaskParams, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 [N, size, size, 1] images, int32 [N] labels) of one split, balanced classes in random order."""
  params.check(task)
  if split not in _SPLIT_INDEX:
    raise DataError(f"unknown split {split!r}: use one of {', '.join(_SPLIT_INDEX)}")
  n = params.examples if split == "train" else params.test_examples
  rng = np.random.default_rng([params.seed, _SPLIT_INDEX[split], TASKS.index(task)])
  labels = rng.permutation(np.arange(n) % 2).astype(np.int32)
  background = 0 if task == "receptive_field" else 200
  images = np.full((n, params.size, params.size, 1), background, np.uint8)
  cue_values = _cue_values(task)
  lo, hi = params.margin, params.size - 1 - params.margin
  for i, label in enumerate(labels):
    pts, values = _signal(task, params, int(label), rng)
    for (y, x), v in zip(pts, values):
      images[i, y, x, 0] = v
    if params.cue > 0:
      agree = rng.random() < params.cue
      y, x = _place(rng, lo, hi, pts, params.cue_distance, "cue")
      images[i, y, x, 0] = cue_values[int(label) if agree else 1 - int(label)]
  return images, labels


def load(name: str, split: str, options: Optional[Mapping[str, object]] = None) -> Dataset:
  """The split of ``synthetic:TASK`` with parameters `options` (`TaskParams` fields) as a `Dataset`."""
  task = name[len(PREFIX):].strip() if name.startswith(PREFIX) else name
  params = params_from(options)
  images, labels = generate(task, params, split)
  return Dataset(images, labels, 2, name, CLASS_NAMES[task])
