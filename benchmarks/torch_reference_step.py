"""The PyTorch side of the step-speed comparison: a DARTS search iteration written the way the original code
runs it (eager PyTorch, NCHW, `model_search.Network` + `architect.Architect`), timed on the same machine.

  pip install torch==2.13.0          # not a darts_jax dependency; only this script needs it
  python benchmarks/torch_reference_step.py                      # C=16, 8 layers, batch 64, 32x32, 2 threads
  python benchmarks/torch_reference_step.py --batch=16 --modes=first_order

One iteration is what the reference's `train()` loop does per batch: the architecture step on the val batch
(first order: ∇α L_val; second order: the finite-difference unrolled step), then the weight step on the train
batch (SGD momentum 0.9, weight decay 3e-4, gradient clip 5). Prints one Markdown row per mode, comparable
with `benchmarks/search_step.py` (whose `second_order_fd` is the same estimator).
"""
import statistics
import time

from absl import app
from absl import flags
import torch
from torch import nn
import torch.nn.functional as F

_C = flags.DEFINE_integer("C", 16, "initial channels")
_LAYERS = flags.DEFINE_integer("layers", 8, "cells")
_BATCH = flags.DEFINE_integer("batch", 64, "batch size (train and val)")
_IMAGE = flags.DEFINE_integer("image", 32, "image side")
_MODES = flags.DEFINE_list("modes", ["first_order", "second_order_fd"], "first_order and/or second_order_fd")
_STEPS = flags.DEFINE_integer("steps", 3, "timed iterations after the first")
_THREADS = flags.DEFINE_integer("threads", 2, "torch.set_num_threads")

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]


def relu_conv_bn(c_in, c_out, k, stride, pad, dilation=1, groups=1):
  return [nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, pad, dilation, groups, bias=False)]


def make_op(name, C, stride):
  bn = lambda: nn.BatchNorm2d(C, affine=False)
  if name == "none":
    return Zero(stride)
  if name == "max_pool_3x3":
    return nn.Sequential(nn.MaxPool2d(3, stride, 1), bn())
  if name == "avg_pool_3x3":
    return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), bn())
  if name == "skip_connect":
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C)
  k = int(name[-1])
  if name.startswith("sep_conv"):
    return nn.Sequential(*relu_conv_bn(C, C, k, stride, k // 2, groups=C), nn.Conv2d(C, C, 1, bias=False), bn(),
                         *relu_conv_bn(C, C, k, 1, k // 2, groups=C), nn.Conv2d(C, C, 1, bias=False), bn())
  return nn.Sequential(*relu_conv_bn(C, C, k, stride, k - 1, dilation=2, groups=C),
                       nn.Conv2d(C, C, 1, bias=False), bn())


class Zero(nn.Module):
  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
  def __init__(self, c_in, c_out):
    super().__init__()
    self.c1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
    self.c2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
    self.bn = nn.BatchNorm2d(c_out, affine=False)

  def forward(self, x):
    x = F.relu(x)
    return self.bn(torch.cat([self.c1(x), self.c2(x[:, :, 1:, 1:])], 1))


class MixedOp(nn.Module):
  def __init__(self, C, stride):
    super().__init__()
    self.ops = nn.ModuleList([make_op(p, C, stride) for p in PRIMITIVES])

  def forward(self, x, weights):
    return sum(w * op(x) for w, op in zip(weights, self.ops))


class Cell(nn.Module):
  def __init__(self, c_pp, c_p, C, reduction, reduction_prev):
    super().__init__()
    self.reduction = reduction
    self.pre0 = (FactorizedReduce(c_pp, C) if reduction_prev
                 else nn.Sequential(*relu_conv_bn(c_pp, C, 1, 1, 0), nn.BatchNorm2d(C, affine=False)))
    self.pre1 = nn.Sequential(*relu_conv_bn(c_p, C, 1, 1, 0), nn.BatchNorm2d(C, affine=False))
    self.ops = nn.ModuleList([MixedOp(C, 2 if reduction and j < 2 else 1) for i in range(4) for j in range(2 + i)])

  def forward(self, s0, s1, weights):
    states = [self.pre0(s0), self.pre1(s1)]
    offset = 0
    for i in range(4):
      states.append(sum(self.ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
      offset += len(states) - 1
    return torch.cat(states[-4:], 1)


class Network(nn.Module):
  def __init__(self, C, layers, num_classes=10):
    super().__init__()
    self.C, self.layers = C, layers
    c_curr = 3 * C
    self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
    c_pp, c_p, c_curr = c_curr, c_curr, C
    self.cells = nn.ModuleList()
    reduction_prev = False
    for i in range(layers):
      reduction = i in (layers // 3, 2 * layers // 3)
      c_curr = c_curr * 2 if reduction else c_curr
      self.cells.append(Cell(c_pp, c_p, c_curr, reduction, reduction_prev))
      reduction_prev = reduction
      c_pp, c_p = c_p, 4 * c_curr
    self.classifier = nn.Linear(c_p, num_classes)
    self.alphas_normal = nn.Parameter(1e-3 * torch.randn(14, 8))
    self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(14, 8))

  def arch_parameters(self):
    return [self.alphas_normal, self.alphas_reduce]

  def weights(self):
    return [p for n, p in self.named_parameters() if not n.startswith("alphas")]

  def forward(self, x):
    s0 = s1 = self.stem(x)
    for cell in self.cells:
      w = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
      s0, s1 = s1, cell(s0, s1, w)
    return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

  def loss(self, x, y):
    return F.cross_entropy(self(x), y)


def arch_step_second_order_fd(model, w_opt, xt, yt, xv, yv, eta):
  """The reference's `_backward_step_unrolled`: an unrolled copy of the network (a new `Network` loaded with
  w′ = w − η(μ·m + ∇w L_train + λw)), full backward of L_val on it, then the finite-difference Hessian-vector
  product ∇α L_val(w′) − η·(∇α L_train(w⁺) − ∇α L_train(w⁻)) / 2ε with ε = 0.01/‖v‖."""
  weights = model.weights()
  g = torch.autograd.grad(model.loss(xt, yt), weights)
  unrolled = Network(model.C, model.layers)
  state = model.state_dict()
  with torch.no_grad():
    for (name, w), gw in zip([(n, p) for n, p in model.named_parameters() if not n.startswith("alphas")], g):
      m = w_opt.state.get(w, {}).get("momentum_buffer", torch.zeros_like(w))
      state[name] = w - eta * (0.9 * m + gw + 3e-4 * w)
  unrolled.load_state_dict(state)
  unrolled.loss(xv, yv).backward()
  d_alpha = [a.grad for a in unrolled.arch_parameters()]
  v = [w.grad for w in unrolled.weights()]
  eps = 0.01 / torch.cat([x.flatten() for x in v]).norm()

  def shift(scale):
    with torch.no_grad():
      for w, vw in zip(weights, v):
        w.add_(scale * eps * vw)

  shift(1.0)
  g_pos = torch.autograd.grad(model.loss(xt, yt), model.arch_parameters())
  shift(-2.0)
  g_neg = torch.autograd.grad(model.loss(xt, yt), model.arch_parameters())
  shift(1.0)
  for a, da, gp, gn in zip(model.arch_parameters(), d_alpha, g_pos, g_neg):
    a.grad = da - eta * (gp - gn) / (2 * eps)


def iteration(model, w_opt, a_opt, xt, yt, xv, yv, mode):
  # As in the reference, `backward()` computes every gradient (weights and α) in both steps.
  model.zero_grad()
  if mode == "first_order":
    model.loss(xv, yv).backward()
  else:
    arch_step_second_order_fd(model, w_opt, xt, yt, xv, yv, w_opt.param_groups[0]["lr"])
  a_opt.step()
  model.zero_grad()
  model.loss(xt, yt).backward()
  nn.utils.clip_grad_norm_(model.weights(), 5.0)
  w_opt.step()


def main(argv):
  del argv
  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(0)
  print(f"torch {torch.__version__} threads={torch.get_num_threads()} C={_C.value} layers={_LAYERS.value} "
        f"batch={_BATCH.value} {_IMAGE.value}x{_IMAGE.value}x3")
  print("| mode | s/iteration (median) | first iteration s |")
  print("|---|---|---|")
  for mode in _MODES.value:
    model = Network(_C.value, _LAYERS.value)
    w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    shape = (_BATCH.value, 3, _IMAGE.value, _IMAGE.value)
    xt, xv = torch.randn(shape), torch.randn(shape)
    yt, yv = torch.arange(_BATCH.value) % 10, torch.arange(_BATCH.value) % 10
    times = []
    for _ in range(_STEPS.value + 1):
      t = time.perf_counter()
      iteration(model, w_opt, a_opt, xt, yt, xv, yv, mode)
      times.append(time.perf_counter() - t)
    print(f"| {mode} | {statistics.median(times[1:]):.3f} | {times[0]:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
