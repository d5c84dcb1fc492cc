"""Search spaces: which primitives exist, how many nodes a cell has, which edges connect them, and everything
in which one space differs from another.

A space is a frozen dataclass (hashable: jitted functions take it as a static argument). Its fields describe
the cell; its methods are what the search loop, the methods and the comparison runner ask of it: the supernet
(`build_supernet`), α's initialization, the discretization of op strengths (`derive`), random architectures
(`random_arch`, `random_path`), the architecture's text/JSON forms, pictures and comparison statistics. The
loop never asks which space it runs. `SearchSpace` is the DARTS family (cells of two inputs, intermediate
nodes that keep `inputs_per_node` edges, concatenated output; `darts_jax.supernet`, `darts_jax.genotypes`);
`NB201Space` overrides what NAS-Bench-201 does otherwise (`darts_jax.nb201`), `SingleEdgeSpace` what a
one-edge network does (`darts_jax.single_edge`, for tasks with a known answer). Another space plugs in as a
subclass. The implementations live in the modules named; methods here import them when called, since those
modules import this one.

Edge order is the reference's: node 0's incoming edges first (from the cell inputs), then node 1's, and so on;
within a node, edges are ordered by source state index. States are numbered cell inputs first
(``0 .. num_inputs-1``), then intermediate nodes (``num_inputs .. num_inputs+num_nodes-1``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

NB201_PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@dataclasses.dataclass(frozen=True)
class Edge:
  """A directed edge from state `src` to state `dst` (state numbering as in the module docstring)."""
  src: int
  dst: int


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """A cell search space.

  Attributes:
    name: short identifier (e.g. "darts", "nb201").
    primitives: candidate operation names, in the order of α's last axis.
    num_inputs: number of cell inputs (2 in DARTS: the two previous cells; 1 in NAS-Bench-201).
    num_nodes: number of intermediate nodes.
    inputs_per_node: edges each node keeps when discretized (2 in DARTS; None means every edge is kept,
      with exactly one op each, as in NAS-Bench-201).
    output: "concat" (concatenate the intermediate nodes, DARTS) or "last" (the last node, NAS-Bench-201).
    pool_batch_norm: whether the search cell's pooling ops end in a non-affine BatchNorm (DARTS' `MixedOp`
      does; NAS-Bench-201's search cell, whose table the benchmark's accuracies come from, does not).
  """
  name: str
  primitives: Tuple[str, ...]
  num_inputs: int
  num_nodes: int
  inputs_per_node: int | None = 2
  output: str = "concat"
  pool_batch_norm: bool = True

  @property
  def edges(self) -> Tuple[Edge, ...]:
    return tuple(Edge(src, self.num_inputs + i)
                 for i in range(self.num_nodes)
                 for src in range(self.num_inputs + i))

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  @property
  def num_ops(self) -> int:
    return len(self.primitives)

  @property
  def alpha_shape(self) -> Tuple[int, int]:
    return (self.num_edges, self.num_ops)

  def edge_index(self, src: int, dst: int) -> int:
    for i, e in enumerate(self.edges):
      if e.src == src and e.dst == dst:
        return i
    raise ValueError(f"search space {self.name!r} has no edge {src}->{dst}")

  def primitive_index(self, name: str) -> int:
    try:
      return self.primitives.index(name)
    except ValueError:
      raise ValueError(f"unknown primitive {name!r} for search space {self.name!r}; "
                       f"choose one of {', '.join(self.primitives)}") from None

  # ------------------------------------------------------------------------------------------------------
  # What the search loop, the methods and the comparison runner ask of a space.

  @property
  def cell_names(self) -> Tuple[str, ...]:
    """The cell kinds with α of their own (keys of α and of the op weights)."""
    return ("normal", "reduce")

  @property
  def scalar_unsampled_ops(self) -> bool:
    """Whether the released code's cell of this space adds the op weights of the ops a hard sample did not
    pick as zero-valued scalars (AutoDL's NAS201SearchCell.forward_gdas), which lets GDAS' straight-through
    gradient reach their α; DARTS-space cells run the sampled op alone."""
    return False

  @property
  def retrainable(self) -> bool:
    """Whether a discovered architecture is retrained from scratch to score it (else looked up, `arch_stats`)."""
    return True

  def init_alphas(self, key, scale: float = 1e-3) -> Dict[str, Any]:
    """α per cell kind, scale·N(0, 1) (the reference's 1e-3)."""
    from darts_jax import supernet  # pylint: disable=g-import-not-at-top
    return supernet.init_alphas(key, self, scale)

  def build_supernet(self, model: Mapping[str, Any], num_classes: int, image_shape, supernet_kwargs=None,
                     mesh_devices: int = 1) -> "Supernet":
    """The search network for images of `image_shape` (H, W, C), with one-line ValueErrors for inputs it
    cannot take. `model`: the config's model block (C, layers and the memory options remat, remat_policy,
    compute_dtype); `supernet_kwargs`: the method's fields (`Method.supernet_kwargs`). On a mesh of several
    devices (`mesh_devices`) the depthwise convolutions never slice the batch axis (the CPU's chunked kernels
    would gather the sharded batch onto every device)."""
    import jax  # pylint: disable=g-import-not-at-top
    from darts_jax import supernet  # pylint: disable=g-import-not-at-top
    from darts_jax.steps import edgewise  # pylint: disable=g-import-not-at-top
    h, w, c = image_shape
    mesh_kw = {"dw_impl": "loop" if jax.default_backend() == "cpu" else "xla"} if mesh_devices > 1 else {}
    memory_kw = {k: model[k] for k in ("remat", "remat_policy", "compute_dtype") if k in model}
    cfg = supernet.SupernetConfig(**{**dict(supernet_kwargs or {}), "C": model["C"], "layers": model["layers"],
                                     "num_classes": num_classes, "in_channels": c, "space": self, **mesh_kw,
                                     **memory_kw})
    supernet.check_input(cfg, (1, h, w, c))
    init = lambda k: supernet.init(k, cfg)
    return Supernet(init, lambda p, x, a: supernet.apply(p, x, a, cfg),
                    supernet.count_params(jax.eval_shape(init, jax.random.PRNGKey(0))), self,
                    edgewise.gradients(cfg))

  def derive(self, op_weights: Dict[str, Any]):
    """The discrete architecture of per-edge op strengths: per node, the `inputs_per_node` edges with the
    strongest non-``none`` op, each with that op (`genotypes.derive_genotype` on the weights as given)."""
    from darts_jax import genotypes  # pylint: disable=g-import-not-at-top
    w = {k: np.asarray(v, np.float64) for k, v in op_weights.items()}
    return genotypes.derive_genotype(w["normal"], w["reduce"], self.primitives, steps=self.num_nodes,
                                     k=self.inputs_per_node, multiplier=self.num_nodes, weights_fn=lambda a: a)

  def derive_threshold(self, op_weights: Dict[str, Any], threshold: float, parse: str):
    """FairDARTS' threshold discretization (`genotypes.derive_threshold`): triple-form genotypes that may drop
    edges and nodes."""
    from darts_jax import genotypes  # pylint: disable=g-import-not-at-top
    w = {k: np.asarray(v, np.float64) for k, v in op_weights.items()}
    return genotypes.derive_threshold(w["normal"], w["reduce"], self.primitives, steps=self.num_nodes,
                                      threshold=threshold, parse=parse, multiplier=self.num_nodes)

  def random_arch(self, rng: np.random.Generator):
    """A uniformly random architecture: per node, `inputs_per_node` distinct inputs, each with a uniform
    non-``none`` op (`genotypes.random_genotype`)."""
    from darts_jax import genotypes  # pylint: disable=g-import-not-at-top
    return genotypes.random_genotype(rng, self.primitives, steps=self.num_nodes, k=self.inputs_per_node)

  @property
  def arch_ops(self) -> Tuple[str, ...]:
    """The ops a discrete architecture of the space can use (``none`` is not one in DARTS' cells)."""
    return tuple(p for p in self.primitives if p != "none")

  def _random_ops(self) -> np.ndarray:
    return np.array([self.primitive_index(p) for p in self.arch_ops])

  def random_path(self, key) -> Dict[str, Any]:
    """One-hot op weights of a uniformly random discrete architecture per cell kind (traceable): per node,
    `inputs_per_node` distinct inputs with a uniform non-``none`` op, weight 0 on the other edges (Li &
    Talwalkar's `sample_arch`, minus ``none``)."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    ops = self._random_ops()
    out = {}
    for c_i, cell in enumerate(self.cell_names):
      k_op, k_in = jax.random.split(jax.random.fold_in(key, c_i))
      w = jax.nn.one_hot(jnp.asarray(ops)[jax.random.randint(k_op, (self.num_edges,), 0, len(ops))],
                         self.num_ops)
      out[cell] = self._path_mask(k_in, w)
    return out

  def _path_mask(self, key, w):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    masks = []
    for n_i in range(self.num_nodes):
      n = self.num_inputs + n_i
      perm = jax.random.permutation(jax.random.fold_in(key, n_i), n)
      masks.append(jnp.zeros((n,)).at[perm[:min(self.inputs_per_node, n)]].set(1.0))
    return w * jnp.concatenate(masks)[:, None]

  def arch_text(self, arch) -> str:
    """The architecture's text form (the reference's ``Genotype(...)``)."""
    from darts_jax import genotypes  # pylint: disable=g-import-not-at-top
    return genotypes.to_text(arch)

  def arch_json(self, arch) -> Any:
    """The architecture as JSON data (`genotypes.to_dict`)."""
    from darts_jax import genotypes  # pylint: disable=g-import-not-at-top
    return genotypes.to_dict(arch)

  def cell_ops(self, arch) -> Optional[List[str]]:
    """The ops of the (normal) cell of an architecture or of its text / JSON form; None if it is not one."""
    from darts_jax import genotypes  # pylint: disable=g-import-not-at-top
    try:
      if isinstance(arch, str):
        arch = genotypes.parse(arch)
      elif isinstance(arch, dict):
        arch = genotypes.from_dict(arch)
      return [op for op, _, _ in genotypes.cell_edges(arch, "normal")]
    except Exception:  # pylint: disable=broad-except  (anything else: not a cell)
      return None

  @property
  def cell_ops_description(self) -> str:
    """Which edges `cell_ops` lists, for reports."""
    return "the normal-cell edges of the final genotypes"

  def plot_arch(self, arch, workdir: str) -> List[str]:
    """Pictures of the architecture's cells in `workdir` (``cells_normal``/``cells_reduce`` .png/.svg)."""
    import os  # pylint: disable=g-import-not-at-top
    from darts_jax import visualize  # pylint: disable=g-import-not-at-top
    return visualize.plot_genotype(arch, os.path.join(workdir, "cells"))

  def arch_stats(self, arch, benchmark=None, dataset: str = "cifar10") -> Dict[str, Any]:
    """Per-architecture figures a comparison reports beside the searches' (the space's own columns)."""
    del arch, benchmark, dataset
    return {}

  # Columns of `arch_stats` in a comparison table: (key, header, digits); a count of runs where the stat is
  # a bool.
  stat_columns: ClassVar[Tuple[Tuple[str, str, int], ...]] = ()
  # Paragraphs a comparison report adds under the space's table.
  report_notes: ClassVar[Tuple[str, ...]] = ()

  @property
  def has_benchmark(self) -> bool:
    """Whether the space has a table of trained architectures (`load_benchmark`)."""
    return False

  def load_benchmark(self, path=None):
    """(table, path) of the space's benchmark table at `path` or its default place; (None, None) if none."""
    del path
    return None, None


class Supernet(NamedTuple):
  """A space's search network: `init(key) -> params`, `apply(params, images, op_weights) -> logits`, its
  parameter count, the space, and (DARTS space) the edgewise step backend's network gradients
  (`steps.edgewise.gradients`; None elsewhere)."""
  init: Callable[..., Any]
  apply: Callable[..., Any]
  num_params: int
  space: "SearchSpace"
  edge_gradients: Optional[Any] = None


def _one_cell_alphas(space: SearchSpace, key, scale: float) -> Dict[str, Any]:
  """α of a space whose cells share one α (NB201, the single edge): scale·N(0, 1) under "normal"."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {"normal": scale * jax.random.normal(key, space.alpha_shape, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class NB201Space(SearchSpace):
  """NAS-Bench-201: one α shared by every cell, every edge keeps one op (``none`` included), the cell
  outputs its last node, architectures are scored by the benchmark's table (`darts_jax.nb201`)."""
  stat_columns: ClassVar[Tuple[Tuple[str, str, int], ...]] = (
      ("network_params", "network params (C=16, N=5)", 0),
      ("benchmark_test_acc", "NB201 benchmark test acc (%)", 2),
      ("disconnected", "disconnected cells", 0),
  )
  report_notes: ClassVar[Tuple[str, ...]] = (
      "Disconnected cells: `none` edges cut every path from the cell's input to its output, so the cell "
      "outputs zeros (every such cell of the table scores 10%, chance level).",)

  @property
  def has_benchmark(self) -> bool:
    return True

  def load_benchmark(self, path=None):
    """The NATS-Bench topology table (`nb201.load_benchmark`) at `path` or `nb201.default_benchmark_path()`."""
    from darts_jax import nb201  # pylint: disable=g-import-not-at-top
    path = path or nb201.default_benchmark_path()
    return (nb201.load_benchmark(path), str(path)) if path else (None, None)

  @property
  def cell_names(self) -> Tuple[str, ...]:
    return ("normal",)

  @property
  def scalar_unsampled_ops(self) -> bool:
    return True

  @property
  def retrainable(self) -> bool:
    return False

  def init_alphas(self, key, scale: float = 1e-3) -> Dict[str, Any]:
    return _one_cell_alphas(self, key, scale)

  def build_supernet(self, model: Mapping[str, Any], num_classes: int, image_shape, supernet_kwargs=None,
                     mesh_devices: int = 1) -> Supernet:
    """NAS-Bench-201's search network (`nb201.NB201Config`: the model block's C channels and N cells per
    stage; its layers and memory options are the DARTS supernet's)."""
    import jax  # pylint: disable=g-import-not-at-top
    from darts_jax import nb201, supernet  # pylint: disable=g-import-not-at-top
    del mesh_devices
    h, w, c = image_shape
    cfg = nb201.NB201Config(**{**dict(supernet_kwargs or {}), "C": model["C"], "N": model.get("N", 5),
                               "num_classes": num_classes, "in_channels": c})
    nb201.check_input(cfg, (1, h, w, c))
    init = lambda k: nb201.init_supernet(k, cfg)
    return Supernet(init, lambda p, x, a: nb201.apply_supernet(p, x, a, cfg),
                    supernet.count_params(jax.eval_shape(init, jax.random.PRNGKey(0))), self)

  def derive(self, op_weights: Dict[str, Any]):
    """Every edge's argmax op, ``none`` included (`nb201.arch_from_alphas`)."""
    from darts_jax import nb201  # pylint: disable=g-import-not-at-top
    return nb201.arch_from_alphas(np.asarray(op_weights["normal"], np.float64))

  def derive_threshold(self, op_weights: Dict[str, Any], threshold: float, parse: str):
    """Every edge keeps one op in NAS-Bench-201: the per-edge argmax, whatever the threshold."""
    del threshold, parse
    return self.derive(op_weights)

  def random_arch(self, rng: np.random.Generator):
    """A uniform op per edge, ``none`` included (`nb201.random_arch`)."""
    from darts_jax import nb201  # pylint: disable=g-import-not-at-top
    return nb201.random_arch(rng)

  @property
  def arch_ops(self) -> Tuple[str, ...]:
    return self.primitives

  def _path_mask(self, key, w):
    return w

  def arch_text(self, arch) -> str:
    from darts_jax import nb201  # pylint: disable=g-import-not-at-top
    return nb201.arch_to_string(arch)

  def arch_json(self, arch) -> Any:
    return {"nb201": self.arch_text(arch)}

  def cell_ops(self, arch) -> Optional[List[str]]:
    from darts_jax import nb201  # pylint: disable=g-import-not-at-top
    if isinstance(arch, dict) and "nb201" in arch:
      arch = arch["nb201"]
    try:
      return list(nb201.as_arch(arch))
    except Exception:  # pylint: disable=broad-except
      return None

  @property
  def cell_ops_description(self) -> str:
    return "the 6 edges of the discovered cells"

  def plot_arch(self, arch, workdir: str) -> List[str]:
    import os  # pylint: disable=g-import-not-at-top
    from darts_jax import visualize  # pylint: disable=g-import-not-at-top
    return visualize.plot_nb201(arch, os.path.join(workdir, "cell"))

  def arch_stats(self, arch, benchmark=None, dataset: str = "cifar10") -> Dict[str, Any]:
    """The final network's parameter count at the benchmark's C=16, N=5, whether `none` edges disconnect the
    cell, and the benchmark table's test accuracy (when a table is given)."""
    from darts_jax import nb201  # pylint: disable=g-import-not-at-top
    out: Dict[str, Any] = {}
    try:
      out["network_params"] = nb201.network_param_count(arch)
      out["disconnected"] = not nb201.is_connected(arch)
    except (ValueError, KeyError, TypeError):
      out["network_params"], out["disconnected"] = None, False
    if benchmark is not None:
      try:
        out["benchmark_test_acc"] = benchmark.query(arch, dataset)
      except (ValueError, KeyError, TypeError):
        out["benchmark_test_acc"] = None
    return out


@dataclasses.dataclass(frozen=True)
class SingleEdgeSpace(SearchSpace):
  """One mixed edge from the image to a fixed head (`darts_jax.single_edge`): an architecture is one op, the
  strongest non-``none`` one. For tasks whose answer is known by construction (`darts_jax.known_answer`); the
  model block's ``primitives`` pick the candidates (`single_edge.parse_primitives`), which the built model's
  space carries."""

  @property
  def cell_names(self) -> Tuple[str, ...]:
    return ("normal",)

  @property
  def retrainable(self) -> bool:
    return False

  def init_alphas(self, key, scale: float = 1e-3) -> Dict[str, Any]:
    return _one_cell_alphas(self, key, scale)

  def build_supernet(self, model: Mapping[str, Any], num_classes: int, image_shape, supernet_kwargs=None,
                     mesh_devices: int = 1) -> Supernet:
    """The single-edge network (`single_edge.SingleEdgeConfig`) on the model block's C, ``primitives``,
    ``stem`` and ``dw_impl``; the returned model's space has those primitives."""
    import jax  # pylint: disable=g-import-not-at-top
    from darts_jax import single_edge, supernet  # pylint: disable=g-import-not-at-top
    del mesh_devices
    h, w, c = image_shape
    space = dataclasses.replace(self, primitives=single_edge.parse_primitives(model.get("primitives")))
    kwargs = {k: v for k, v in dict(supernet_kwargs or {}).items() if k == "partial_channels"}
    cfg = single_edge.SingleEdgeConfig(C=model["C"], num_classes=num_classes, in_channels=c, space=space,
                                       stem=model.get("stem", "tile"), dw_impl=model.get("dw_impl", "auto"),
                                       **kwargs)
    single_edge.check_input(cfg, (1, h, w, c))
    init = lambda k: single_edge.init(k, cfg)
    return Supernet(init, lambda p, x, a: single_edge.apply(p, x, a, cfg),
                    supernet.count_params(jax.eval_shape(init, jax.random.PRNGKey(0))), space)

  def derive(self, op_weights: Dict[str, Any]) -> str:
    """The edge's strongest op other than ``none``."""
    w = np.asarray(op_weights["normal"], np.float64).reshape(-1)
    order = [i for i in np.argsort(-w, kind="stable") if self.primitives[i] != "none"]
    return self.primitives[order[0]]

  def derive_threshold(self, op_weights: Dict[str, Any], threshold: float, parse: str) -> str:
    del threshold, parse
    return self.derive(op_weights)

  def random_arch(self, rng: np.random.Generator) -> str:
    ops = self.arch_ops
    return ops[int(rng.integers(len(ops)))]

  def arch_text(self, arch) -> str:
    return str(arch)

  def arch_json(self, arch) -> Any:
    return {"op": str(arch), "primitives": list(self.primitives)}

  def cell_ops(self, arch) -> Optional[List[str]]:
    if isinstance(arch, dict):
      arch = arch.get("op")
    return [arch] if isinstance(arch, str) and arch in self.primitives else None

  @property
  def cell_ops_description(self) -> str:
    return "the edge's op"

  def plot_arch(self, arch, workdir: str) -> List[str]:
    import os  # pylint: disable=g-import-not-at-top
    from darts_jax import visualize  # pylint: disable=g-import-not-at-top
    return visualize.plot_single_edge(str(arch), os.path.join(workdir, "cell"))


DARTS_SPACE = SearchSpace(name="darts", primitives=DARTS_PRIMITIVES, num_inputs=2, num_nodes=4,
                          inputs_per_node=2, output="concat")

NB201_SPACE = NB201Space(name="nb201", primitives=NB201_PRIMITIVES, num_inputs=1, num_nodes=3,
                          inputs_per_node=None, output="last", pool_batch_norm=False)

SINGLE_EDGE_SPACE = SingleEdgeSpace(name="single_edge", primitives=DARTS_PRIMITIVES, num_inputs=1, num_nodes=1,
                                    inputs_per_node=1, output="last")

SPACES = {s.name: s for s in (DARTS_SPACE, NB201_SPACE, SINGLE_EDGE_SPACE)}


def get_space(name: str) -> SearchSpace:
  try:
    return SPACES[name]
  except KeyError:
    raise ValueError(f"unknown search space {name!r}; choose one of {', '.join(sorted(SPACES))}") from None
