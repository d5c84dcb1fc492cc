"""Interoperability with the reference PyTorch DARTS code: load its state dicts, reproduce its outputs.

A reference state dict is a mapping from the reference's parameter/buffer names to numpy arrays in PyTorch
layouts (convolution `(out, in, kh, kw)`, depthwise `(C, 1, kh, kw)`, linear `(out, in)`). The loaders
convert them into darts_jax pytrees (NHWC / HWIO layouts), so released DARTS checkpoints can be evaluated
in JAX. `compute_reference_outputs` rebuilds the network a fixture describes and returns every value under
its `out/` keys (see `../shared/reference/README.md`).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import bilevel, genotypes, networks, ops, steps, supernet

Params = Dict[str, Any]


class InteropError(ValueError):
  """A state dict does not match the network it is loaded into."""


def conv_weight(w: np.ndarray) -> np.ndarray:
  """PyTorch (out, in, kh, kw) -> HWIO."""
  return np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0))


def pointwise_weight(w: np.ndarray) -> np.ndarray:
  """PyTorch 1×1 convolution (out, in, 1, 1) -> (in, out)."""
  return np.asarray(w, np.float32)[:, :, 0, 0].T


def depthwise_weight(w: np.ndarray) -> np.ndarray:
  """PyTorch depthwise (C, 1, kh, kw) -> (kh, kw, C)."""
  return np.transpose(np.asarray(w, np.float32)[:, 0], (1, 2, 0))


class _Reader:
  """Pops names from a state dict so that unused or missing entries are reported by name."""

  def __init__(self, state: Mapping[str, np.ndarray]):
    self.state = dict(state)
    self.used = set()

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.state:
      raise InteropError(f"state dict has no entry {name!r}; is it from the same network configuration?")
    self.used.add(name)
    return np.asarray(self.state[name])

  def check_all_used(self, ignore=("num_batches_tracked",)) -> None:
    left = [k for k in self.state if k not in self.used and not any(s in k for s in ignore)]
    if left:
      raise InteropError(f"{len(left)} state dict entries were not used (first: {left[0]!r}); "
                         "the network configuration does not match the state dict")


def _set(tree_leaf: jax.Array, index, value: np.ndarray, name: str):
  target_shape = tree_leaf[index].shape if index is not None else tree_leaf.shape
  if tuple(value.shape) != tuple(target_shape):
    raise InteropError(f"{name}: shape {value.shape} does not match the network's {target_shape}")
  if index is None:
    return jnp.asarray(value)
  return tree_leaf.at[index].set(value)


def _load_relu_conv_bn(r: _Reader, prefix: str, p: Params, s: Params | None = None) -> None:
  """ReLUConvBN (`op.1` conv, `op.2` BN) or FactorizedReduce (`conv_1`, `conv_2`, `bn`)."""
  if "conv" in p:
    p["conv"] = _set(p["conv"], None, conv_weight(r(f"{prefix}.op.1.weight")), prefix)
    _load_bn(r, f"{prefix}.op.2", p, s, "bn")
  else:
    p["conv1"] = _set(p["conv1"], None, pointwise_weight(r(f"{prefix}.conv_1.weight")), prefix)
    p["conv2"] = _set(p["conv2"], None, pointwise_weight(r(f"{prefix}.conv_2.weight")), prefix)
    _load_bn(r, f"{prefix}.bn", p, s, "bn")


def _load_bn(r: _Reader, prefix: str, p: Params, s: Params | None, key: str) -> None:
  if key in p:
    p[key] = {"scale": jnp.asarray(r(f"{prefix}.weight")), "bias": jnp.asarray(r(f"{prefix}.bias"))}
  if s is not None and key in s:
    s[key] = {"mean": jnp.asarray(r(f"{prefix}.running_mean")),
              "var": jnp.asarray(r(f"{prefix}.running_var"))}


def _op_entries(name: str, prefix: str):
  """(darts_jax key, reference name, converter) of one primitive's weights, in the reference's layout."""
  if name.startswith("sep_conv"):
    return [("dw1", f"{prefix}.op.1.weight", depthwise_weight), ("pw1", f"{prefix}.op.2.weight", pointwise_weight),
            ("dw2", f"{prefix}.op.5.weight", depthwise_weight), ("pw2", f"{prefix}.op.6.weight", pointwise_weight)]
  if name.startswith("dil_conv"):
    return [("dw", f"{prefix}.op.1.weight", depthwise_weight), ("pw", f"{prefix}.op.2.weight", pointwise_weight)]
  if name == "skip_connect":
    return [("conv1", f"{prefix}.conv_1.weight", pointwise_weight),
            ("conv2", f"{prefix}.conv_2.weight", pointwise_weight)]
  if name == "conv_7x1_1x7":  # a bare nn.Sequential(ReLU, Conv 1x7, Conv 7x1, BN) in the reference: no `.op`
    return [("conv1", f"{prefix}.1.weight", conv_weight), ("conv2", f"{prefix}.2.weight", conv_weight)]
  if name.startswith("nor_conv"):
    return [("conv", f"{prefix}.op.1.weight", conv_weight)]
  return []


def _op_bn_entries(name: str, prefix: str):
  if name.startswith("sep_conv"):
    return [("bn1", f"{prefix}.op.3"), ("bn2", f"{prefix}.op.7")]
  if name.startswith("dil_conv"):
    return [("bn", f"{prefix}.op.3")]
  if name == "skip_connect":
    return [("bn", f"{prefix}.bn")]
  if name == "conv_7x1_1x7":
    return [("bn", f"{prefix}.3")]
  if name.startswith("nor_conv"):
    return [("bn", f"{prefix}.op.2")]
  return []


def load_search_params(state: Mapping[str, np.ndarray], cfg: supernet.SupernetConfig) -> Params:
  """Supernet weights from a reference `model_search.Network` state dict."""
  r = _Reader(state)
  params = supernet.init(jax.random.PRNGKey(0), cfg)
  params["stem"]["conv"] = _set(params["stem"]["conv"], None, conv_weight(r("stem.0.weight")), "stem.0")
  _load_bn(r, "stem.1", params["stem"], None, "bn")
  for i, cell in enumerate(params["cells"]):
    reduction = i in cfg.reduction_layers
    _load_relu_conv_bn(r, f"cells.{i}.preprocess0", cell["pre0"])
    _load_relu_conv_bn(r, f"cells.{i}.preprocess1", cell["pre1"])
    for wave, wave_params in zip(supernet.cell_waves(cfg.space, reduction), cell["waves"]):
      for name, op_params in wave_params.items():
        o = cfg.space.primitive_index(name)
        for s_i in range(len(wave.sources)):
          for d_i in range(len(wave.dsts)):
            e = int(wave.edge_ids[s_i, d_i])
            prefix = f"cells.{i}._ops.{e}._ops.{o}"
            for key, ref_name, convert in _op_entries(name, prefix):
              op_params[key] = _set(op_params[key], (s_i, d_i), convert(r(ref_name)), ref_name)
  params["classifier"] = {"w": jnp.asarray(r("classifier.weight").T), "b": jnp.asarray(r("classifier.bias"))}
  r.check_all_used(ignore=("num_batches_tracked", "running_"))
  return params


def fixture_state_dict(fixture: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The `param/` and `buffer/` entries of a fixture as one reference state dict."""
  out = {}
  for k in fixture:
    for pre in ("param/", "buffer/"):
      if k.startswith(pre):
        out[k[len(pre):]] = np.asarray(fixture[k])
  return out


def nchw_to_nhwc(x: np.ndarray) -> jax.Array:
  return jnp.asarray(np.transpose(np.asarray(x, np.float32), (0, 2, 3, 1)))


def _search_config(fixture) -> supernet.SupernetConfig:
  if int(fixture.get("steps", 4)) != 4 or int(fixture.get("multiplier", 4)) != 4:
    raise InteropError("only steps=4, multiplier=4 search fixtures are supported")
  return supernet.SupernetConfig(C=int(fixture["C"]), num_classes=int(fixture["num_classes"]),
                                 layers=int(fixture["layers"]),
                                 stem_multiplier=int(fixture.get("stem_multiplier", 3)),
                                 in_channels=int(np.shape(fixture["x_train"])[1]))


def _search_outputs(fixture, keys=None) -> Dict[str, Any]:
  cfg = _search_config(fixture)
  state = fixture_state_dict(fixture)
  params = load_search_params(state, cfg)
  momentum = {k[len("momentum_buffer/"):]: np.asarray(v) for k, v in fixture.items()
              if k.startswith("momentum_buffer/")}
  alphas = {"normal": jnp.asarray(fixture["alphas_normal"]), "reduce": jnp.asarray(fixture["alphas_reduce"])}
  train = {"image": nchw_to_nhwc(fixture["x_train"]), "label": jnp.asarray(fixture["y_train"])}
  val = {"image": nchw_to_nhwc(fixture["x_val"]), "label": jnp.asarray(fixture["y_val"])}
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  eta = float(fixture["eta"])
  out: Dict[str, Any] = {}
  want = lambda k: keys is None or any(x.startswith(k) for x in keys)
  if want("logits") or want("loss"):
    logits = jax.jit(problem.apply)(params, train["image"], supernet.softmax_weights(alphas))
    out["logits"] = np.asarray(logits)
    out["loss"] = np.asarray(bilevel.cross_entropy(logits, train["label"]))
  for mode, key in [("first_order", "grad1"), ("second_order_exact", "grad2exact"),
                    ("second_order_fd", "grad2fd")]:
    if not want(key):
      continue
    hp = bilevel.SearchHParams(w_lr=eta, w_lr_min=eta, w_momentum=float(fixture["momentum"]),
                               w_weight_decay=float(fixture["weight_decay"]), hypergradient=mode)
    w_opt = bilevel.weight_optimizer(hp).init(params)
    if momentum:
      m = load_search_params_like(momentum, cfg)
      w_opt = set_momentum_buffer(w_opt, m)
    fn = jax.jit(lambda p, a, o, tb, vb, hp=hp: steps.hypergradient(
        problem, hp, bilevel.SearchState(p, a, o, None, jnp.zeros((), jnp.int32), jax.random.PRNGKey(0)), tb, vb)[0])
    g = fn(params, alphas, w_opt, train, val)
    out[f"{key}_alphas_normal"] = np.asarray(g["normal"])
    out[f"{key}_alphas_reduce"] = np.asarray(g["reduce"])
  out["genotype"] = genotypes.to_text(genotypes.derive_genotype(
      np.asarray(fixture["alphas_normal"]), np.asarray(fixture["alphas_reduce"])), ranges=True)
  return out


def load_search_params_like(state: Mapping[str, np.ndarray], cfg: supernet.SupernetConfig) -> Params:
  """Like `load_search_params`, for per-parameter tensors such as SGD momentum buffers."""
  return load_search_params(state, cfg)


def set_momentum_buffer(w_opt_state, m: Params):
  """Replaces SGD's momentum buffer inside `bilevel.weight_optimizer`'s state."""
  parts = list(w_opt_state)
  parts[2] = parts[2]._replace(trace=m)
  return type(w_opt_state)(parts) if not isinstance(w_opt_state, tuple) else tuple(parts)


# --------------------------------------------------------------------------------------------------------
# The final networks (the reference's `model.NetworkCIFAR` / `model.NetworkImageNet`).


def _load_conv_bn(r: _Reader, conv_name: str, bn_prefix: str | None, p: Params, s: Params, conv_key: str,
                  bn_key: str | None) -> None:
  p[conv_key] = _set(p[conv_key], None, conv_weight(r(conv_name)), conv_name)
  if bn_prefix is not None:
    _load_bn(r, bn_prefix, p, s, bn_key)


def _check_shapes(loaded: Params, expected: Params, what: str) -> None:
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(loaded), jax.tree.leaves(expected)):
    if a.shape != b.shape:
      raise InteropError(f"{what}{jax.tree_util.keystr(path)}: shape {a.shape} does not match the network's "
                         f"{b.shape}")


def _sparse_op_prefixes(r: _Reader, genotype, spec: networks.CellSpec, i: int) -> list:
  """FairDARTS' `DCOCell` names (triple-form genotypes): the ops of the genotype's entries with node `n` and
  input `j` form the list `cells.{i}._ops.{n}.{j}`, in the order the entries are written. Returns the prefix
  of each of the network's edges (`spec.ops`, `genotypes.cell_edges` order) and marks the entries of the
  edges the network drops (their input is a node without edges; `DCOCell` builds them but skips them) as
  read, so that they are ignored; every other entry must be used."""
  raw = getattr(genotype, "reduce" if spec.reduction else "normal")
  slots, seen = {}, {}  # (node, input) -> [op name of its k-th entry]
  for name, n, j in raw:
    slots.setdefault((n, j), []).append(name)
  out = []
  for (name, j, _), n in zip(spec.ops, spec.nodes):
    k = seen.get((n, j), 0)
    if k >= len(slots.get((n, j), ())) or slots[(n, j)][k] != name:
      raise InteropError(f"cell {i}: the network's edge {name} ({j} -> {n}) is not entry {k} of the "
                         f"genotype's ({n}, {j}) entries {slots.get((n, j), [])}")
    seen[(n, j)] = k + 1
    out.append(f"cells.{i}._ops.{n}.{j}.{k}")
  for (n, j), names in slots.items():
    if seen.get((n, j), 0) not in (0, len(names)):
      raise InteropError(f"cell {i}: the network keeps {seen[(n, j)]} of the {len(names)} ops on edge "
                         f"{j} -> {n}; expected all or none")
    if (n, j) not in seen:  # dropped by the network: accepted, not loaded
      prefix = f"cells.{i}._ops.{n}.{j}."
      r.used.update(key for key in r.state if key.startswith(prefix))
  return out


def load_network_params(state: Mapping[str, np.ndarray], cfg: networks.NetworkConfig):
  """(params, batch_stats) of a final network from a reference `model.NetworkCIFAR`/`NetworkImageNet` state
  dict. With `cfg.auxiliary` False, the state dict's `auxiliary_head.*` entries are ignored (released
  checkpoints carry the head).

  A triple-form genotype (`genotypes.is_sparse`) reads FairDARTS' `NetworkCIFAR` with `DCOCell`s
  (`parse_method` other than 'darts'): the k-th op written for node n and input j is
  `cells.{i}._ops.{n}.{j}.{k}`; the weights of the edges that `DCOCell` builds but skips (input from a node
  without edges), which the network leaves out, are ignored."""
  r = _Reader(state)
  params, stats = networks.init(jax.random.PRNGKey(0), cfg)
  expected = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, stats))
  if cfg.kind == "cifar":
    _load_conv_bn(r, "stem.0.weight", "stem.1", params["stem"], stats["stem"], "conv", "bn")
  else:
    _load_conv_bn(r, "stem0.0.weight", "stem0.1", params["stem0"], stats["stem0"], "conv1", "bn1")
    _load_conv_bn(r, "stem0.3.weight", "stem0.4", params["stem0"], stats["stem0"], "conv2", "bn2")
    _load_conv_bn(r, "stem1.1.weight", "stem1.2", params["stem1"], stats["stem1"], "conv", "bn")
  for i, spec in enumerate(networks.layout(cfg).cells):
    cp, cs = params["cells"][i], stats["cells"][i]
    _load_relu_conv_bn(r, f"cells.{i}.preprocess0", cp["pre0"], cs["pre0"])
    _load_relu_conv_bn(r, f"cells.{i}.preprocess1", cp["pre1"], cs["pre1"])
    prefixes = (_sparse_op_prefixes(r, cfg.genotype, spec, i) if genotypes.is_sparse(cfg.genotype)
                else [f"cells.{i}._ops.{e}" for e in range(len(spec.ops))])
    for e, (name, _, stride) in enumerate(spec.ops):
      if ops.is_weight_free(name, stride):  # includes skip_connect at stride 1 (Identity)
        continue
      prefix = prefixes[e]
      for key, ref_name, convert in _op_entries(name, prefix):
        cp["ops"][e][key] = _set(cp["ops"][e][key], None, convert(r(ref_name)), ref_name)
      for key, bn_prefix in _op_bn_entries(name, prefix):
        _load_bn(r, bn_prefix, cp["ops"][e], cs["ops"][e], key)
  if cfg.auxiliary:
    p, s = params["aux"], stats["aux"]
    _load_conv_bn(r, "auxiliary_head.features.2.weight", "auxiliary_head.features.3", p, s, "conv1", "bn1")
    _load_conv_bn(r, "auxiliary_head.features.5.weight", "auxiliary_head.features.6" if "bn2" in p else None,
                  p, s, "conv2", "bn2")
    p["classifier"] = {"w": jnp.asarray(r("auxiliary_head.classifier.weight").T),
                       "b": jnp.asarray(r("auxiliary_head.classifier.bias"))}
  params["classifier"] = {"w": jnp.asarray(r("classifier.weight").T), "b": jnp.asarray(r("classifier.bias"))}
  r.check_all_used(ignore=("num_batches_tracked",) + (() if cfg.auxiliary else ("auxiliary_head.",)))
  _check_shapes(params, expected[0], "params")
  _check_shapes(stats, expected[1], "batch_stats")
  return params, stats


def _network_config(fixture, kind: str) -> networks.NetworkConfig:
  return networks.NetworkConfig(genotype=str(np.asarray(fixture["genotype"])), C=int(fixture["C"]),
                                num_classes=int(fixture["num_classes"]), layers=int(fixture["layers"]),
                                auxiliary=bool(fixture["auxiliary"]),
                                in_channels=int(np.shape(fixture["x"])[1]),
                                kind="cifar" if kind == "eval_cifar" else "imagenet")


def _eval_outputs(fixture, kind: str | None = None) -> Dict[str, Any]:
  kind = kind or str(np.asarray(fixture["kind"]))
  cfg = _network_config(fixture, kind)
  params, stats = load_network_params(fixture_state_dict(fixture), cfg)

  @jax.jit
  def run(params, stats, x):  # one program for both modes: compilation dominates on a CPU
    logits_eval, _, _ = networks.apply(params, stats, x, cfg, train=False)
    logits_train, logits_aux, _ = networks.apply(params, stats, x, cfg, train=True, drop_path_prob=0.0)
    return logits_eval, logits_train, logits_aux

  logits_eval, logits_train, logits_aux = run(params, stats, nchw_to_nhwc(fixture["x"]))
  out = {"logits_eval": np.asarray(logits_eval), "logits_train": np.asarray(logits_train),
         "num_params": networks.count_params(params),
         "num_params_auxiliary": networks.count_params(params, include_auxiliary=True)
                                 - networks.count_params(params)}
  if logits_aux is not None:
    out["logits_aux_train"] = np.asarray(logits_aux)
  return out


def compute_reference_outputs(fixture: Mapping[str, Any], keys=None) -> Dict[str, Any]:
  """Builds the network a reference fixture describes, loads its weights and returns every `out/` value.

  `fixture` is a mapping of numpy arrays in the layout of `shared/reference/README.md`, without `out/` keys.
  Keys of the result omit the `out/` prefix. `keys` (optional) restricts a search fixture to the outputs
  whose names start with one of them (each hypergradient mode is a separate, minutes-long XLA compile).
  """
  kind = str(np.asarray(fixture["kind"]))
  if kind == "search":
    return _search_outputs(fixture, keys)
  if kind in ("eval_cifar", "eval_imagenet"):
    return _eval_outputs(fixture, kind)
  raise InteropError(f"unknown fixture kind {kind!r}; expected 'search', 'eval_cifar' or 'eval_imagenet'")
