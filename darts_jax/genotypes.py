"""Discrete DARTS cell architectures (genotypes): the data type, its text/JSON forms, and where they come from.

A `Genotype` has the same fields, in the same order, as the reference DARTS code (``normal``, ``normal_concat``,
``reduce``, ``reduce_concat``), and its text form is the reference's printed form, so genotypes copied from papers'
repositories or from reference search logs load unchanged with `parse`. Each cell lists two ``(op_name, input)``
edges per intermediate node; inputs and concat entries are state indices (0 and 1 are the cell inputs
c_{k-2} and c_{k-1}, 2.. the intermediate nodes).

FairDARTS' threshold parse (its ``DCOCell`` form) writes ``(op_name, node, input)`` triples instead: any number
of edges per node, a node without edges is absent, and the cell's output concatenates the nodes that have
edges (the concat fields are kept as written, e.g. FairDARTS' ``range(2, 6)``). `cell_edges` and `cell_nodes`
read either form; `derive_threshold` makes the triple form from σ(α).

This module also holds:
  * `derive_genotype`: the DARTS discretization of architecture weights α (``model_search.py`` ``genotype()``).
  * `derive_threshold`: FairDARTS' threshold discretization (``utils.py`` ``parse``), which can drop edges.
  * `random_genotype`: the uniformly random baseline.
  * `PUBLISHED` / `SOURCES`: published genotypes with their citations, looked up by `get_genotype` and
    `resolve_genotype` (which also takes a JSON/text file or genotype text).
"""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from darts_jax.topology import DARTS_PRIMITIVES

# Ops that appear only in the hand-designed / RL-searched baselines (NASNet, AmoebaNet).
EXTRA_PRIMITIVES = ("sep_conv_7x7", "conv_7x1_1x7")
ALL_PRIMITIVES = tuple(DARTS_PRIMITIVES) + EXTRA_PRIMITIVES

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_EXPECTED_FORM = "Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)"


class GenotypeError(ValueError):
  """A genotype (or its text/JSON form) is malformed or invalid."""


class Genotype(NamedTuple):
  """A discrete DARTS architecture: a normal and a reduction cell.

  Attributes:
    normal: ``(op_name, input_state)`` edges of the normal cell, two per intermediate node, node by node.
    normal_concat: state indices concatenated to form the normal cell's output.
    reduce: edges of the reduction cell, as for `normal`.
    reduce_concat: state indices concatenated to form the reduction cell's output.
  """
  normal: list[tuple[str, int]]
  normal_concat: list[int]
  reduce: list[tuple[str, int]]
  reduce_concat: list[int]

  def __str__(self) -> str:
    return to_text(self)

  @property
  def steps(self) -> int:
    """Number of intermediate nodes of the normal cell (the triple form: its highest node or concat entry)."""
    if is_sparse(self):
      return max([n for _, n, _ in self.normal] + list(self.normal_concat) + [1]) - 1
    return len(self.normal) // 2

  def to_text(self) -> str:
    return to_text(self)

  def to_dict(self) -> dict[str, list[Any]]:
    return to_dict(self)

  def to_json(self, indent: int | None = None) -> str:
    return to_json(self, indent=indent)


def _one_line(text: str, limit: int = 80) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def make_genotype(normal: Iterable[Sequence[Any]], normal_concat: Iterable[int],
                  reduce: Iterable[Sequence[Any]], reduce_concat: Iterable[int]) -> Genotype:
  """Builds a `Genotype` in canonical form: lists of ``(str, int)`` tuples (or ``(str, int, int)`` triples,
  FairDARTS' form) and lists of ints.

  Accepts tuples, ranges and numpy integers, so genotypes built elsewhere compare equal to parsed ones.
  """
  def is_int(x):
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))

  def ops(seq: Iterable[Sequence[Any]], field: str) -> list[tuple]:
    out = []
    for item in seq:
      if (not isinstance(item, (tuple, list)) or len(item) not in (2, 3) or not isinstance(item[0], str)
          or not all(is_int(x) for x in item[1:])):
        raise GenotypeError(f"malformed edge in {field}: expected (op_name, input_index) or "
                            f"(op_name, node, input_index), got {item!r}")
      out.append((str(item[0]),) + tuple(int(x) for x in item[1:]))
    return out

  def concat(seq: Iterable[int], field: str) -> list[int]:
    out = []
    for x in seq:
      if not is_int(x):
        raise GenotypeError(f"malformed {field}: expected a list of ints, got {x!r}")
      out.append(int(x))
    return out

  g = Genotype(ops(normal, "normal"), concat(normal_concat, "normal_concat"),
               ops(reduce, "reduce"), concat(reduce_concat, "reduce_concat"))
  if len({len(e) for e in g.normal + g.reduce}) > 1:
    raise GenotypeError("malformed genotype: mixes (op, input) pairs and (op, node, input) triples; use one form")
  return g


def is_sparse(g: Genotype) -> bool:
  """Whether `g` is in FairDARTS' ``(op_name, node, input)`` form (any number of edges per node; a genotype
  without any edge, which a threshold parse can give, counts as that form)."""
  edges = list(g.normal) + list(g.reduce)
  return any(len(e) == 3 for e in edges) or not edges


def cell_edges(g: Genotype, which: str) -> list[tuple[str, int, int]]:
  """The `which` cell's ``(op_name, node, input)`` edges, node by node, that the network computes.

  Pair form: two per node in order. Triple form (FairDARTS' ``DCOCell``): in node order (stable), without the
  edges whose input is an intermediate node that has no edge of its own (``DCOCell`` skips them), repeatedly.
  """
  ops = getattr(g, which)
  if not is_sparse(g):
    return [(op, 2 + e // 2, j) for e, (op, j) in enumerate(ops)]
  present, kept = set(), []
  for op, node, j in sorted(ops, key=lambda e: e[1]):
    if j < 2 or j in present:
      kept.append((op, node, j))
      present.add(node)
  return kept


def cell_nodes(g: Genotype, which: str) -> list[int]:
  """The states the `which` cell concatenates into its output: its concat field in the pair form; in the
  triple form the nodes with edges (`cell_edges`), in order, as FairDARTS' ``DCOCell`` does."""
  if not is_sparse(g):
    return list(getattr(g, which + "_concat"))
  return sorted({node for _, node, _ in cell_edges(g, which)})


def canonical(g: Genotype) -> Genotype:
  """Returns `g` with its fields as lists of ``(str, int)`` tuples / lists of ints (see `make_genotype`)."""
  return make_genotype(*g)


def to_text(g: Genotype, ranges: bool = False) -> str:
  """The reference's printed form: ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)``.

  With ``ranges=True`` contiguous concat lists print as ``range(2, 6)``, as the reference's `genotypes.py` and
  its search logs write them.
  """
  c = canonical(g)

  def concat(xs):
    if ranges and xs and xs == list(range(xs[0], xs[-1] + 1)):
      return f"range({xs[0]}, {xs[-1] + 1})"
    return repr(xs)

  return (f"Genotype(normal={c.normal!r}, normal_concat={concat(c.normal_concat)}, "
          f"reduce={c.reduce!r}, reduce_concat={concat(c.reduce_concat)})")


def _literal_int(node: ast.AST, what: str) -> int:
  if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
    return node.value
  raise GenotypeError(f"malformed genotype text: {what} must be an integer literal, got "
                      f"{_one_line(ast.unparse(node))!r}")


def _parse_ops(node: ast.AST, field: str) -> list[tuple]:
  if not isinstance(node, (ast.List, ast.Tuple)):
    raise GenotypeError(f"malformed genotype text: {field} must be a list of (op_name, input) pairs, got "
                        f"{_one_line(ast.unparse(node))!r}")
  out = []
  for elt in node.elts:
    if (not isinstance(elt, (ast.Tuple, ast.List)) or len(elt.elts) not in (2, 3)
        or not isinstance(elt.elts[0], ast.Constant) or not isinstance(elt.elts[0].value, str)):
      raise GenotypeError(f"malformed genotype text: each {field} entry must be ('op_name', input) or "
                          f"('op_name', node, input), got {_one_line(ast.unparse(elt))!r}")
    out.append((elt.elts[0].value,) + tuple(_literal_int(x, f"the node/input indices of {field} entries")
                                            for x in elt.elts[1:]))
  return out


def _parse_concat(node: ast.AST, field: str) -> list[int]:
  if isinstance(node, (ast.List, ast.Tuple)):
    return [_literal_int(e, f"{field} entries") for e in node.elts]
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
    if node.func.id == "list" and len(node.args) == 1:
      return _parse_concat(node.args[0], field)
    if node.func.id == "range" and 1 <= len(node.args) <= 3:
      args = [_literal_int(a, f"range() arguments in {field}") for a in node.args]
      if len(args) == 3 and args[2] == 0:
        raise GenotypeError(f"malformed genotype text: range() step in {field} must not be zero")
      return list(range(*args))
  raise GenotypeError(f"malformed genotype text: {field} must be a list of ints or range(a, b), got "
                      f"{_one_line(ast.unparse(node))!r}")


def parse(text: str) -> Genotype:
  """Parses the reference's printed genotype form (see `to_text`) without evaluating it.

  Accepts ``range(a, b)`` concat lists, either quote style, any whitespace or line breaks, a
  ``genotypes.Genotype(...)`` call, and an assignment such as ``DARTS_V2 = Genotype(...)``.

  Raises:
    GenotypeError: the text is not of that form.
  """
  if not isinstance(text, str):
    raise GenotypeError(f"malformed genotype text: expected a string, got {type(text).__name__}")
  bad_form = f"malformed genotype text: expected {_EXPECTED_FORM}, got {_one_line(text)!r}"
  try:
    module = ast.parse(text.strip())
  except SyntaxError:
    raise GenotypeError(bad_form) from None
  if len(module.body) != 1:
    raise GenotypeError(bad_form)
  stmt = module.body[0]
  if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
    call = stmt.value
  elif isinstance(stmt, (ast.AnnAssign, ast.Expr)):
    call = stmt.value
  else:
    raise GenotypeError(bad_form)
  if not isinstance(call, ast.Call):
    raise GenotypeError(bad_form)
  func = call.func
  name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
  if name != "Genotype":
    raise GenotypeError(bad_form)
  if len(call.args) > len(_FIELDS) or any(isinstance(a, ast.Starred) for a in call.args):
    raise GenotypeError(bad_form)
  values: dict[str, ast.AST] = dict(zip(_FIELDS, call.args))
  for kw in call.keywords:
    if kw.arg not in _FIELDS:
      what = "**kwargs" if kw.arg is None else f"unknown field {kw.arg!r}"
      raise GenotypeError(f"malformed genotype text: {what}; expected {_EXPECTED_FORM}")
    if kw.arg in values:
      raise GenotypeError(f"malformed genotype text: field {kw.arg!r} given twice")
    values[kw.arg] = kw.value
  missing = [f for f in _FIELDS if f not in values]
  if missing:
    raise GenotypeError(f"malformed genotype text: missing field(s) {', '.join(missing)}; "
                        f"expected {_EXPECTED_FORM}")
  return make_genotype(_parse_ops(values["normal"], "normal"),
                       _parse_concat(values["normal_concat"], "normal_concat"),
                       _parse_ops(values["reduce"], "reduce"),
                       _parse_concat(values["reduce_concat"], "reduce_concat"))


def to_dict(g: Genotype) -> dict[str, list[Any]]:
  """``{"normal": [[op, input], ...], "normal_concat": [...], "reduce": ..., "reduce_concat": ...}`` (entries
  ``[op, node, input]`` in the triple form)."""
  c = canonical(g)
  return {"normal": [list(e) for e in c.normal], "normal_concat": list(c.normal_concat),
          "reduce": [list(e) for e in c.reduce], "reduce_concat": list(c.reduce_concat)}


def from_dict(d: Mapping[str, Any]) -> Genotype:
  """Inverse of `to_dict`. Raises GenotypeError for missing or unknown keys or malformed values."""
  if not isinstance(d, Mapping):
    raise GenotypeError(f"malformed genotype dict: expected a mapping with keys {', '.join(_FIELDS)}, "
                        f"got {type(d).__name__}")
  missing = [f for f in _FIELDS if f not in d]
  extra = sorted(str(k) for k in d if k not in _FIELDS)
  if missing or extra:
    raise GenotypeError(f"malformed genotype dict: missing keys {missing}, unknown keys {extra}; "
                        f"expected exactly {', '.join(_FIELDS)}")
  for f in _FIELDS:
    if not isinstance(d[f], (list, tuple)):
      raise GenotypeError(f"malformed genotype dict: {f} must be a list, got {_one_line(repr(d[f]))}")
  return make_genotype(d["normal"], d["normal_concat"], d["reduce"], d["reduce_concat"])


def to_json(g: Genotype, indent: int | None = None) -> str:
  """JSON of `to_dict`; `from_json` reads it back exactly."""
  return json.dumps(to_dict(g), indent=indent)


def from_json(text: str) -> Genotype:
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    raise GenotypeError(f"malformed genotype JSON: {e}") from None
  return from_dict(d)


def validate(g: Genotype, primitives: Sequence[str] = ALL_PRIMITIVES, steps: int | None = None) -> Genotype:
  """Checks that `g` describes buildable DARTS-style cells; returns `g`.

  Pair form: two edges per intermediate node (``steps`` nodes if given, else ``len(ops) // 2``); node i
  (0-based among intermediate nodes) may take inputs 0..i+1. Triple form: nodes 2..steps+1, each input an
  earlier state, at least one edge the network computes (`cell_edges`). Ops must be in `primitives` and not
  ``none``; concat entries must be distinct intermediate-node states (2..steps+1).

  Raises:
    GenotypeError: naming the first problem found.
  """
  if not isinstance(g, tuple) or len(g) != len(_FIELDS):
    raise GenotypeError(f"not a genotype: {_one_line(repr(g))}")
  c = canonical(g)
  sparse = is_sparse(c)
  valid_ops = [p for p in primitives if p != "none"]
  for cell, ops, concat in (("normal", c.normal, c.normal_concat), ("reduce", c.reduce, c.reduce_concat)):
    if sparse:
      n = steps if steps is not None else max([node for _, node, _ in ops] + list(concat) + [1]) - 1
    else:
      if not ops or len(ops) % 2:
        raise GenotypeError(f"{cell} cell has {len(ops)} edges; expected 2 per intermediate node "
                            f"(a non-zero even number)")
      n = len(ops) // 2
      if steps is not None and n != steps:
        raise GenotypeError(f"{cell} cell has {len(ops)} edges; expected 2 * steps = {2 * steps}")
    for e, edge in enumerate(ops):
      op, node, j = (edge[0], edge[1] - 2, edge[2]) if sparse else (edge[0], e // 2, edge[1])
      if op == "none":
        raise GenotypeError(f"{cell} cell edge {e} (node {node}) uses 'none', which is not an op of a "
                            f"discrete cell")
      if op not in valid_ops:
        raise GenotypeError(f"unknown op {op!r} in {cell} cell edge {e}; valid ops: {', '.join(valid_ops)}")
      if sparse and not 0 <= node < n:
        raise GenotypeError(f"{cell} cell edge {e} goes to state {node + 2}; a {n}-node cell has "
                            f"intermediate states 2..{n + 1}")
      if not 0 <= j <= node + 1:
        raise GenotypeError(f"{cell} cell edge {e} takes input {j}, but node {node} may only take inputs "
                            f"0..{node + 1} (states that exist before it)")
    if sparse and any(b[1] < a[1] for a, b in zip(ops, ops[1:])):
      raise GenotypeError(f"{cell} cell lists its (op, node, input) edges out of node order; list them node by "
                          f"node (FairDARTS' DCOCell computes nodes in the order they first appear)")
    if sparse and not cell_edges(c, cell):
      raise GenotypeError(f"{cell} cell has no edge from the cell inputs: its output would be empty "
                          f"(a threshold parse kept nothing; lower op_threshold or search longer)")
    if not concat:
      raise GenotypeError(f"{cell}_concat is empty")
    for x in concat:
      if not 2 <= x <= n + 1:
        raise GenotypeError(f"{cell}_concat index {x} out of range: a {n}-node cell concatenates states "
                            f"2..{n + 1} (0 and 1 are the cell inputs)")
    if len(set(concat)) != len(concat):
      raise GenotypeError(f"{cell}_concat {concat} repeats an index")
  return g


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  e = np.exp(x - np.max(x, axis=axis, keepdims=True))
  return e / np.sum(e, axis=axis, keepdims=True)


def _derive_cell(weights: np.ndarray, primitives: Sequence[str], steps: int, k: int) -> list[tuple[str, int]]:
  ops = [i for i, p in enumerate(primitives) if p != "none"]
  gene = []
  start = 0
  for i in range(steps):
    w = weights[start:start + i + 2]
    edges = sorted(range(i + 2), key=lambda x: -max(w[x][o] for o in ops))[:k]
    for j in edges:
      best = ops[0]
      for o in ops[1:]:
        if w[j][o] > w[j][best]:
          best = o
      gene.append((primitives[best], j))
    start += i + 2
  return gene


def derive_genotype(alphas_normal: Any, alphas_reduce: Any, primitives: Sequence[str] = DARTS_PRIMITIVES,
                    steps: int = 4, k: int = 2, multiplier: int = 4,
                    weights_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> Genotype:
  """Discretizes architecture parameters with the DARTS rule (reference ``model_search.py`` ``genotype()``).

  Per node, edges are ranked by their strongest non-``none`` op weight (ties: lower input first) and the top
  `k` kept, each with its strongest non-``none`` op (ties: first in `primitives`); edges are listed in that
  ranked order, as the reference does.

  Args:
    alphas_normal: (num_edges, len(primitives)) α of the normal cell, edges in search-space order.
    alphas_reduce: same for the reduction cell.
    primitives: op names of α's last axis; ``none`` (if present) is never chosen.
    steps: intermediate nodes per cell.
    k: edges kept per node.
    multiplier: number of last states concatenated for the output.
    weights_fn: maps α (float64 array) to op weights; default softmax over the last axis
      (e.g. a sigmoid for FairDARTS).

  Returns:
    The genotype, with concat ``list(range(2 + steps - multiplier, steps + 2))``.
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  num_edges = sum(2 + i for i in range(steps))
  fn = softmax if weights_fn is None else weights_fn
  cells = []
  for name, a in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (num_edges, len(primitives)):
      raise ValueError(f"{name} has shape {a.shape}; expected ({num_edges}, {len(primitives)}) for "
                       f"{steps} steps and {len(primitives)} primitives")
    cells.append(_derive_cell(np.asarray(fn(a), dtype=np.float64), primitives, steps, k))
  concat = list(range(2 + steps - multiplier, steps + 2))
  return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=list(concat))


THRESHOLD_PARSES = ("threshold_sparse", "threshold_edge")


def derive_threshold(weights_normal: Any, weights_reduce: Any, primitives: Sequence[str] = DARTS_PRIMITIVES,
                     steps: int = 4, threshold: float = 0.85, parse: str = "threshold_sparse",
                     multiplier: int = 4) -> Genotype:
  """FairDARTS' threshold discretization of op weights (σ(α)), released ``utils.py`` ``parse``: the triple
  form, in which a node may keep 0, 1 or 2 edges.

  ``"threshold_sparse"`` (FairDARTS' default): per node, the two edges with the strongest op (DARTS' ranking),
  each kept with that op only if its weight is at least `threshold`. ``"threshold_edge"``: every edge, each
  with those of its two strongest ops that reach `threshold`, weaker first. ``none`` is never chosen (the
  released space has no ``none``). Concat is ``range(2 + steps - multiplier, steps + 2)``, as released.
  """
  if parse not in THRESHOLD_PARSES:
    raise ValueError(f"unknown threshold parse {parse!r}; choose one of {', '.join(THRESHOLD_PARSES)}")
  ops = [i for i, p in enumerate(primitives) if p != "none"]
  num_edges = sum(2 + i for i in range(steps))
  cells = []
  for name, w in (("weights_normal", weights_normal), ("weights_reduce", weights_reduce)):
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (num_edges, len(primitives)):
      raise ValueError(f"{name} has shape {w.shape}; expected ({num_edges}, {len(primitives)})")
    gene, start = [], 0
    for i in range(steps):
      node_w = w[start:start + i + 2]
      if parse == "threshold_sparse":
        for j in sorted(range(i + 2), key=lambda x: -max(node_w[x][o] for o in ops))[:2]:
          best = max(ops, key=lambda o: (node_w[j][o], -o))
          if node_w[j][best] >= threshold:
            gene.append((primitives[best], i + 2, j))
      else:
        for j in range(i + 2):
          top = sorted(ops, key=lambda o: node_w[j][o])[-2:]
          gene.extend((primitives[o], i + 2, j) for o in top if node_w[j][o] >= threshold)
      start += i + 2
    cells.append(gene)
  concat = list(range(2 + steps - multiplier, steps + 2))
  return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=list(concat))


def random_genotype(rng: np.random.Generator, primitives: Sequence[str] = DARTS_PRIMITIVES, steps: int = 4,
                    k: int = 2) -> Genotype:
  """Samples a genotype uniformly: per node, `k` distinct earlier states, each with a non-``none`` op.

  Inputs of a node are listed in increasing order; the output concatenates all `steps` nodes (as DARTS).
  """
  ops = [p for p in primitives if p != "none"]
  cells = []
  for _ in range(2):
    gene = []
    for i in range(steps):
      inputs = np.sort(rng.choice(i + 2, size=min(k, i + 2), replace=False))
      gene.extend((ops[int(rng.integers(len(ops)))], int(j)) for j in inputs)
    cells.append(gene)
  concat = list(range(2, steps + 2))
  return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=list(concat))


_CITE_DARTS = ("Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019. "
               "Released code: github.com/quark0/darts, cnn/genotypes.py")
_CITE_NASNET = ("Zoph, Vasudevan, Shlens, Le. Learning Transferable Architectures for Scalable Image "
                "Recognition. CVPR 2018. Cell as transcribed in github.com/quark0/darts, cnn/genotypes.py")
_CITE_AMOEBA = ("Real, Aggarwal, Huang, Le. Regularized Evolution for Image Classifier Architecture Search. "
                "AAAI 2019. Cell as transcribed in github.com/quark0/darts, cnn/genotypes.py")
_CITE_PCDARTS = ("Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel Connections for "
                 "Memory-Efficient Architecture Search. ICLR 2020. Released code: "
                 "github.com/yuhuixu1993/PC-DARTS, genotypes.py")
_CITE_PDARTS = ("Chen, Xie, Wu, Tian. Progressive Differentiable Architecture Search: Bridging the Depth Gap "
                "between Search and Evaluation. ICCV 2019. Released code: github.com/chenxin061/pdarts, "
                "genotypes.py (PDARTS)")
_CITE_GDAS = ("Dong, Yang. Searching for A Robust Neural Architecture in Four GPU Hours. CVPR 2019. "
              "Released code: github.com/D-X-Y/AutoDL-Projects, lib/nas_infer_model/DXYs/genotypes.py (GDAS_V1)")

_PUBLISHED_TEXT: dict[str, tuple[str, str]] = {
    "NASNet": (
        "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
        "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), "
        "('sep_conv_3x3', 1), ('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], "
        "reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0), "
        "('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2), "
        "('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])",
        _CITE_NASNET),
    "AmoebaNet": (
        "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), "
        "('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], "
        "reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), "
        "('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), "
        "('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
        _CITE_AMOEBA),
    "DARTS_V1": (
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
        "('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
        _CITE_DARTS + " (DARTS_V1, first-order search)"),
    "DARTS_V2": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
        "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])",
        _CITE_DARTS + " (DARTS_V2, second-order search)"),
    "PC_DARTS": (
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
        "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
        "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
        "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 2)], reduce_concat=range(2, 6))",
        _CITE_PCDARTS + " (PC_DARTS_cifar = PCDARTS, searched on CIFAR-10)"),
    "PC_DARTS_IMAGENET": (
        "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], "
        "normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), "
        "('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), "
        "('sep_conv_3x3', 3)], reduce_concat=range(2, 6))",
        _CITE_PCDARTS + " (PC_DARTS_image, searched on ImageNet)"),
    "PDARTS": (
        "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
        "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
        "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), "
        "('dil_conv_5x5', 3)], reduce_concat=range(2, 6))",
        _CITE_PDARTS + ", searched on CIFAR-10"),
    "GDAS_V1": (
        "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_5x5', 4), ('sep_conv_3x3', 3)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), "
        "('sep_conv_5x5', 1)], reduce_concat=[2, 3, 4, 5])",
        _CITE_GDAS + ", searched on CIFAR-10"),
}

_ALIASES = {"DARTS": "DARTS_V2", "PCDARTS": "PC_DARTS", "P_DARTS": "PDARTS", "GDAS": "GDAS_V1"}

PUBLISHED: dict[str, Genotype] = {name: parse(text) for name, (text, _) in _PUBLISHED_TEXT.items()}
SOURCES: dict[str, str] = {name: source for name, (_, source) in _PUBLISHED_TEXT.items()}
for _alias, _target in _ALIASES.items():
  PUBLISHED[_alias] = PUBLISHED[_target]
  SOURCES[_alias] = SOURCES[_target]
del _alias, _target


def _lookup_key(name: str) -> str:
  return name.strip().upper().replace("-", "_")


_LOOKUP = {_lookup_key(n): n for n in PUBLISHED}


def get_genotype(name: str) -> Genotype:
  """A copy of the published genotype `name` (case and ``-``/``_`` insensitive, e.g. ``"pc-darts"``).

  Raises:
    GenotypeError: unknown name, listing the known ones.
  """
  key = _LOOKUP.get(_lookup_key(name)) if isinstance(name, str) else None
  if key is None:
    raise GenotypeError(f"unknown genotype {name!r}; known genotypes: {', '.join(PUBLISHED)}")
  return copy.deepcopy(PUBLISHED[key])


def resolve_genotype(spec: str | Path | Genotype) -> Genotype:
  """Turns a user-supplied genotype spec into a `Genotype`.

  Args:
    spec: a registry name (see `PUBLISHED`), a path to a ``.json`` file written from `to_json` or a ``.txt``
      file holding genotype text, or genotype text itself (see `parse`). A `Genotype` is returned as is.

  Raises:
    GenotypeError: the spec is none of these, or the file/text is malformed.
  """
  if isinstance(spec, Genotype):
    return spec
  if isinstance(spec, str) and _lookup_key(spec) in _LOOKUP:
    return get_genotype(spec)
  path = Path(spec).expanduser()
  try:
    is_file = path.is_file()
  except (OSError, ValueError):
    is_file = False
  if not is_file and isinstance(spec, str) and "Genotype" in spec and "(" in spec:
    return parse(spec)
  if is_file:
    text = path.read_text()
    if path.suffix.lower() == ".json" or (path.suffix.lower() != ".txt" and text.lstrip().startswith("{")):
      try:
        return from_json(text)
      except GenotypeError as e:
        raise GenotypeError(f"{path}: {e}") from None
    try:
      return parse(text)
    except GenotypeError as e:
      raise GenotypeError(f"{path}: {e}") from None
  raise GenotypeError(f"cannot resolve genotype {_one_line(str(spec))!r}: not a known name "
                      f"({', '.join(PUBLISHED)}), an existing .json/.txt file, or Genotype(...) text")
