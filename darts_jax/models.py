"""Where a search space meets its networks: the search network a space's config builds, and the figures of a
space's final networks that a comparison reports.

`build_supernet(space, model, num_classes, image_shape)` returns a `SearchModel` (pure `init` / `apply`
functions and the network's config); the step backends are built from it one layer up (`darts_jax.search`).
Each space family registers its builder here (`register`); a subclass of a registered space (a custom DARTS
space, for example) uses its parent's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

import jax

from darts_jax import nb201, single_edge, supernet
from darts_jax.search_space import NB201Space, SearchSpace, SingleEdgeSpace


class SearchModel(NamedTuple):
  """A space's search network: `init(key) -> params`, `apply(params, images, op_weights) -> logits`, its
  parameter count, the space (with the candidates the model block chose) and the network's config
  (`supernet.SupernetConfig`, `nb201.NB201Config` or `single_edge.SingleEdgeConfig`)."""
  init: Callable[..., Any]
  apply: Callable[..., Any]
  num_params: int
  space: SearchSpace
  config: Any


class SpaceModels(NamedTuple):
  """What `register` records for a space family: its search network's builder, ``build(space, model,
  num_classes, (H, W, C), supernet_kwargs, mesh_devices) -> SearchModel``, and optionally the parameter
  count of an architecture's final network, ``network_params(arch) -> int``, for reports."""
  build: Callable[..., SearchModel]
  network_params: Optional[Callable[[Any], int]] = None


_REGISTRY: Dict[type, SpaceModels] = {}


def register(space_type: type, models: SpaceModels) -> None:
  """Makes `models` the networks of `space_type` and of its subclasses that have none of their own."""
  _REGISTRY[space_type] = models


def for_space(space: SearchSpace) -> SpaceModels:
  for cls in type(space).__mro__:
    if cls in _REGISTRY:
      return _REGISTRY[cls]
  raise ValueError(f"search space {space.name!r} ({type(space).__name__}) has no networks; "
                   "register them with darts_jax.models.register")


def _model(init, apply, space, cfg) -> SearchModel:
  return SearchModel(init, apply, supernet.count_params(jax.eval_shape(init, jax.random.PRNGKey(0))), space, cfg)


def build_supernet(space: SearchSpace, model: Mapping[str, Any], num_classes: int, image_shape,
                   supernet_kwargs=None, mesh_devices: int = 1) -> SearchModel:
  """The search network of `space` for images of `image_shape` (H, W, C), with one-line ValueErrors for inputs
  it cannot take. `model`: the config's model block; `supernet_kwargs`: the method's fields
  (`Method.supernet_kwargs`); `mesh_devices`: the devices the batch is sharded over."""
  return for_space(space).build(space, model, num_classes, image_shape, supernet_kwargs, mesh_devices)


def arch_stats(space: SearchSpace, arch, benchmark=None, dataset: str = "cifar10") -> Dict[str, Any]:
  """`space.arch_stats`, plus ``network_params`` (the final network's size) where the space's networks count
  it."""
  out = dict(space.arch_stats(arch, benchmark, dataset))
  count = for_space(space).network_params
  if count is not None:
    try:
      out["network_params"] = count(arch)
    except (ValueError, KeyError, TypeError):
      out["network_params"] = None
  return out


def _build_darts(space, model, num_classes, image_shape, supernet_kwargs, mesh_devices) -> SearchModel:
  """The DARTS supernet on the model block's C, layers and memory options (remat, remat_policy,
  compute_dtype). On a mesh of several devices the depthwise convolutions never slice the batch axis (the
  CPU's chunked kernels would gather the sharded batch onto every device)."""
  h, w, c = image_shape
  mesh_kw = {"dw_impl": "loop" if jax.default_backend() == "cpu" else "xla"} if mesh_devices > 1 else {}
  memory_kw = {k: model[k] for k in ("remat", "remat_policy", "compute_dtype") if k in model}
  cfg = supernet.SupernetConfig(**{**dict(supernet_kwargs or {}), "C": model["C"], "layers": model["layers"],
                                   "num_classes": num_classes, "in_channels": c, "space": space, **mesh_kw,
                                   **memory_kw})
  supernet.check_input(cfg, (1, h, w, c))
  return _model(lambda k: supernet.init(k, cfg), lambda p, x, a: supernet.apply(p, x, a, cfg), space, cfg)


def _build_nb201(space, model, num_classes, image_shape, supernet_kwargs, mesh_devices) -> SearchModel:
  """NAS-Bench-201's search network (`nb201.NB201Config`: the model block's C channels and N cells per stage)."""
  del mesh_devices
  h, w, c = image_shape
  cfg = nb201.NB201Config(**{**dict(supernet_kwargs or {}), "C": model["C"], "N": model.get("N", 5),
                             "num_classes": num_classes, "in_channels": c})
  nb201.check_input(cfg, (1, h, w, c))
  return _model(lambda k: nb201.init_supernet(k, cfg), lambda p, x, a: nb201.apply_supernet(p, x, a, cfg),
                space, cfg)


def _build_single_edge(space, model, num_classes, image_shape, supernet_kwargs, mesh_devices) -> SearchModel:
  """The single-edge network (`single_edge.SingleEdgeConfig`) on the model block's C, ``primitives``, ``stem``
  and ``dw_impl``; the returned model's space has those primitives."""
  del mesh_devices
  h, w, c = image_shape
  space = dataclasses.replace(space, primitives=single_edge.parse_primitives(model.get("primitives")))
  kwargs = {k: v for k, v in dict(supernet_kwargs or {}).items() if k == "partial_channels"}
  cfg = single_edge.SingleEdgeConfig(C=model["C"], num_classes=num_classes, in_channels=c, space=space,
                                     stem=model.get("stem", "tile"), dw_impl=model.get("dw_impl", "auto"),
                                     **kwargs)
  single_edge.check_input(cfg, (1, h, w, c))
  return _model(lambda k: single_edge.init(k, cfg), lambda p, x, a: single_edge.apply(p, x, a, cfg), space, cfg)


register(SearchSpace, SpaceModels(_build_darts))
register(NB201Space, SpaceModels(_build_nb201, nb201.network_param_count))
register(SingleEdgeSpace, SpaceModels(_build_single_edge))
