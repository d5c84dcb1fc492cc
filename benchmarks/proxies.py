"""What the zero-cost proxies cost per NB201 cell, with the program's matmul convolution and with XLA's.

  python benchmarks/proxies.py [--cells=4] [--synflow_cells=64]
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/proxies.py --devices=2 --cells=8

Times `proxies.nb201_program` (the benchmark's network, C=16, N=5; `lax.map` over the cells, each edge's op
by `lax.switch`) for synflow (float64, one 32×32×3 all-ones image) and for each data-dependent group (one
batch of 64 random side×side×1 images; ``--side=28``, the default, is the command's Fashion-MNIST batch): the
first call (compile and run) and a second call on the same cells, per cell. ``--conv=xla`` swaps the program's convolution for
`lax.conv_general_dilated`, the form it replaced (XLA:CPU runs float64 convolutions, and convolutions
inside `lax.switch` branches, several times slower). ``--devices=n`` splits the cells over n local devices, as
`experiments/zero_cost.py` does (on CPU, XLA runs this program's one device on one core; virtual CPU devices
give it the others).
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import proxies

_CELLS = flags.DEFINE_integer("cells", 4, "cells per data-dependent timing")
_SYNFLOW_CELLS = flags.DEFINE_integer("synflow_cells", 64, "cells per synflow timing")
_CONV = flags.DEFINE_enum("conv", "matmul", ["matmul", "xla"], "the program's convolution")
_GROUPS = flags.DEFINE_list("groups", ["synflow", "snip+grad_norm+fisher", "grasp", "jacob_cov"],
                            "proxy groups to time, '+' joining the proxies of one program")
_SIDE = flags.DEFINE_integer("side", 28, "the data-dependent proxies' image side (benchmarks/README's table: 32)")
_DEVICES = flags.DEFINE_integer("devices", 1, "local devices sharing the cells (a divisor of the cell counts)")


def _xla_conv(x, w, stride, pad):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main(argv):
  del argv
  if _CONV.value == "xla":
    proxies._conv_as_matmul = _xla_conv  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  if _DEVICES.value < 1 or _CELLS.value % _DEVICES.value or _SYNFLOW_CELLS.value % _DEVICES.value:
    raise app.UsageError(f"--devices={_DEVICES.value} must be at least 1 and divide --cells and --synflow_cells")
  devices = jax.local_devices()[:_DEVICES.value]
  if len(devices) < _DEVICES.value:
    raise app.UsageError(f"--devices={_DEVICES.value} but {len(devices)} local devices; on CPU set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={_DEVICES.value}")
  print(f"conv: {_CONV.value}; devices: {len(devices)} of {jax.device_count()}\n")
  print("| proxies | cells | first call s | per cell s | all 15,625 cells |\n|---|---|---|---|---|")
  for group in _GROUPS.value:
    names = group.split("+")
    synflow = names == ["synflow"]
    k = _SYNFLOW_CELLS.value if synflow else _CELLS.value
    codes = jnp.asarray(rng.integers(0, 5, (k, 6)).astype(np.int32))
    channels, shape = (3, (1, 32, 32, 3)) if synflow else (1, (64, _SIDE.value, _SIDE.value, 1))
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    y = jnp.arange(shape[0]) % 10
    with jax.enable_x64(synflow):
      params = proxies.nb201_init(jax.random.PRNGKey(0), 16, 5, 10, channels)
      fn = proxies.nb201_program(names, shape, devices)
      t = time.perf_counter()
      jax.block_until_ready(fn(params, codes, x, y))
      first = time.perf_counter() - t
      t = time.perf_counter()
      jax.block_until_ready(fn(params, codes, x, y))
      per = (time.perf_counter() - t) / k
    total = per * 15625
    print(f"| {group} | {k} | {first:.1f} | {per:.4f} | {total / 60:.1f} min ({total / 3600:.2f} h) |", flush=True)


if __name__ == "__main__":
  app.run(main)
