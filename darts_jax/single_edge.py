"""The single-edge search network: one mixed operation on the image, then a concatenated ReLU, global average
pooling and a linear classifier.

The smallest space in which an architecture is one choice of op, so that tasks with a known answer
(`darts_jax.known_answer`, `darts_jax.data.synthetic`) can check a search method. Between the image and the edge
sits a stem that keeps every op's receptive field its own: ``"tile"`` repeats the image's channels up to C
(no weights; C a multiple of the image's channels) and ``"conv"`` is a 1x1 convolution with BatchNorm. The
head is a concatenated ReLU, [relu(h), relu(-h)], which keeps values of either sign: what the classifier
cannot read, the op did not pass on (a plain ReLU would hide negative outputs). The head has no BatchNorm: it
would make the loss blind to the scale of the edge's output, and so give a method that weights one sampled op
(GDAS) no gradient for α.

`SingleEdgeConfig.primitives` are the candidate ops (any of `ops.SEARCH_OPS`), in the order of α's last axis;
α has one row, ``{"normal": (1, num_ops)}``. The mixed op is `supernet.mixed_cell_apply` on a one-node cell,
so every method's op weights (PC-DARTS' partial channels and edge factors, GDAS' offsets) apply as in the
other spaces.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from darts_jax import ops, supernet
from darts_jax.search_space import DARTS_PRIMITIVES, NB201_PRIMITIVES, SINGLE_EDGE_SPACE, SearchSpace

Params = Dict[str, Any]
STEMS = ("tile", "conv")
PRIMITIVE_SETS = {"darts": DARTS_PRIMITIVES, "nb201": NB201_PRIMITIVES}


def parse_primitives(spec: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
  """Candidate ops from a set name (``"darts"``, ``"nb201"``), a comma-separated string or a sequence of names;
  None is the DARTS space's eight. Raises a one-line ValueError for an unknown or repeated op."""
  if spec is None or spec == "":
    return DARTS_PRIMITIVES
  if isinstance(spec, str):
    spec = PRIMITIVE_SETS.get(spec.strip().lower(), [p.strip() for p in spec.split(",") if p.strip()])
  names = tuple(spec)
  for name in names:
    if name not in ops.SEARCH_OPS:
      raise ValueError(f"unknown candidate op {name!r} in model.primitives; use 'darts', 'nb201' or names of "
                       f"{', '.join(sorted(ops.SEARCH_OPS))}")
  if len(set(names)) != len(names) or len(names) < 2:
    raise ValueError(f"model.primitives {', '.join(names)} must name at least two distinct ops")
  return names


@dataclasses.dataclass(frozen=True)
class SingleEdgeConfig:
  """C channels on the edge, `num_classes` outputs, `in_channels` image channels, the stem (`STEMS`), the
  space (its primitives; `SearchSpace.pool_batch_norm` says whether pooling ends in BatchNorm), PC-DARTS'
  `partial_channels` and the depthwise implementation (`ops.Ctx.dw_impl`)."""
  C: int = 8
  num_classes: int = 2
  in_channels: int = 1
  space: SearchSpace = SINGLE_EDGE_SPACE
  stem: str = "tile"
  partial_channels: int = 1
  dw_impl: str = "auto"

  def __post_init__(self):
    if self.stem not in STEMS:
      raise ValueError(f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")
    if self.C < 1 or self.num_classes < 1 or self.in_channels < 1:
      raise ValueError(f"C={self.C}, num_classes={self.num_classes} and in_channels={self.in_channels} must be "
                       "positive")
    if self.stem == "tile" and self.C % self.in_channels:
      raise ValueError(f"the tile stem repeats the image's {self.in_channels} channels: C={self.C} must be a "
                       "multiple of them (or use model.stem='conv')")
    if self.partial_channels < 1 or self.C % self.partial_channels:
      raise ValueError(f"C={self.C} must be divisible by partial_channels={self.partial_channels}")


def check_input(cfg: SingleEdgeConfig, x_shape) -> None:
  """Raises a one-line ValueError when an image batch cannot go through the network (`ops.check_images`)."""
  ops.check_images(x_shape, cfg.in_channels, 1, network="the single-edge network")


def init(key, cfg: SingleEdgeConfig) -> Params:
  """Weights of the network (α excluded)."""
  k_stem, k_edge, k_cls = jax.random.split(key, 3)
  params: Params = {"edge": supernet.mixed_cell_init(k_edge, cfg.space, cfg.C, False, cfg.partial_channels)}
  if cfg.stem == "conv":
    params["stem"] = {"conv": ops.conv_init(k_stem, 1, 1, cfg.in_channels, cfg.C),
                      "bn": ops.bn_init(cfg.C, True, False)[0]}
  kw, kb = jax.random.split(k_cls)
  params["classifier"] = {"w": ops._uniform(kw, (2 * cfg.C, cfg.num_classes), 2 * cfg.C),
                          "b": ops._uniform(kb, (cfg.num_classes,), 2 * cfg.C)}
  return params


def apply(params: Params, x: jax.Array, arch_weights: Params, cfg: SingleEdgeConfig,
          ctx: ops.Ctx = ops.Ctx()) -> jax.Array:
  """Logits. `arch_weights["normal"]`: (1, num_ops) op weights, optionally ``"normal_edge"`` (1,) edge factors
  and ``"normal_offset"`` (1,) scalars (`supernet.mixed_cell_apply`). BatchNorm uses batch statistics."""
  ctx = ctx._replace(train=True, dw_impl=cfg.dw_impl if ctx.dw_impl == "auto" else ctx.dw_impl)
  if cfg.stem == "tile":
    h = jnp.tile(x, (1, 1, 1, cfg.C // cfg.in_channels))
  else:
    h = ops.batch_norm(ops.conv(x, params["stem"]["conv"]), params["stem"]["bn"], {}, ctx)[0]
  node = supernet.mixed_cell_apply(params["edge"], [h], arch_weights["normal"], cfg.space, False, ctx,
                                   cfg.partial_channels, edge_scale=arch_weights.get("normal_edge"),
                                   edge_offset=arch_weights.get("normal_offset"))[-1]
  h = jnp.concatenate([jax.nn.relu(node), jax.nn.relu(-node)], axis=-1)
  return jnp.mean(h, axis=(1, 2)) @ params["classifier"]["w"] + params["classifier"]["b"]
