"""A search on a task whose answer is known by construction: one mixed edge on a synthetic image task.

  python experiments/search.py --config=experiments/configs/known_answer.py --workdir=/tmp/ka_rf
  python experiments/search.py --config=experiments/configs/known_answer.py:dark_pixels --workdir=/tmp/ka_dark
  python experiments/known_answer.py --config=experiments/configs/known_answer.py:suite --workdir=/tmp/ka_suite

Default: ``synthetic:receptive_field`` (`darts_jax.data.synthetic`), 16x16 images of two lit pixels 6 apart on
both axes, labelled by the pair's orientation, with a cue pixel that gives the label with probability 0.8;
searched in the single-edge space (`darts_jax.single_edge`) over the DARTS space's eight ops. Expected answer:
``sep_conv_5x5`` or ``dil_conv_5x5``, the only ops whose receptive field (9) holds both pixels; every other
op reaches the cue's 80 % at most (`darts_jax.known_answer.check_task` trains each alone). ``:dark_pixels``:
two dark pixels whose value (0 or 100 on a 200 background) is the label; expected answer ``skip_connect`` or
``avg_pool_3x3`` (every convolution starts with ReLU, which maps both values to 0 after normalization, and max
pooling returns the background). The chosen op is written to ``genotype.txt`` / ``genotype.json`` by name.

Options: ``--config.synthetic.distance=3`` (answer: the separable convolutions, the dilated ones see even
offsets only), ``--config.synthetic.cue=0`` (no cue), ``--config.model.primitives=nb201`` (NAS-Bench-201's
five ops; with ``--config.synthetic.distance=2`` the answer is ``nor_conv_3x3``) or any comma-separated
registered ops, ``--config.method=gdas``; ``--config.dataset=npz:/path/data.npz`` searches your own task.
``:suite`` is the runner's config (`experiments/known_answer.py`): every gradient method × 3 seeds on both
tasks, each task first checked op by op, a table of how often each method finds the answer (README).
``:smoke`` is a few steps.
"""
import ml_collections

P = ml_collections.config_dict.placeholder

from darts_jax import bilevel

GRADIENT_METHODS = ["darts", "darts_2nd", "darts_2nd_fd", "gdas", "pcdarts", "drnas", "fairdarts", "sdarts_rs",
                    "sdarts_adv", "beta_darts", "darts_minus"]


def search_config(task: str = "receptive_field") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "darts"
  c.method_kwargs = ml_collections.ConfigDict()
  c.space = "single_edge"
  c.dataset = f"synthetic:{task}"
  c.synthetic = ml_collections.ConfigDict({"size": 16, "distance": 6, "pixels": 2, "cue": 0.8,
                                           "cue_distance": 5, "margin": 2, "examples": 2048,
                                           "test_examples": 1024, "seed": 0})
  c.data_dir = ""
  c.subset = 0
  c.image_size = 0
  c.train_portion = 0.5
  c.augment = False           # a flip would turn one class into the other
  c.batch_size = 32
  c.epochs = 10
  c.steps_per_epoch = 30
  c.warmup_epochs = 0         # the same for every method (the papers' warm-ups are sized for 50 epochs)
  c.eval_examples = 512
  c.hessian_every = 0         # epochs between the α Hessian's largest eigenvalue (0: never; darts_jax.hessian)
  c.hessian_batches = 1       # validation batches it is measured on
  c.hessian_iters = 20        # power iterations at most
  # DARTS-ES (RobustDARTS, darts_jax.hessian.EarlyStop): "darts_es" stops the search when the eigenvalue's local
  # average rises by `factor` over `delta` averages and exports the architecture of that earlier epoch; needs
  # hessian_every > 0. Released: window 5, delta 4, factor 1.3, start_epoch 10, ev_freq 2 (0 here: hessian_every)
  # "darts_ada" (DARTS-ADA) instead returns to that epoch with the weights' weight decay × mul_factor, until
  # it reaches max_weight_decay.
  c.early_stop = ""           # "" (none), "darts_es" or "darts_ada"
  c.early_stop_kwargs = ml_collections.ConfigDict({"window": 5, "delta": 4, "factor": 1.3, "start_epoch": 10,
                                                   "ev_freq": 0,
                                                   # DARTS-ADA (None: released 3.0, 243e-4, 0)
                                                   "mul_factor": P(float), "max_weight_decay": P(float),
                                                   "extra_rollback_epochs": P(int)})
  c.selection = "argmax"      # or "pt" / "pt_fixed": DARTS-PT's perturbation selection (darts_jax.projection)
  c.pt_tune_epochs = 5        # one edge: one decision, so no fine-tuning whatever this is
  c.pt_edges_per_decision = 1
  c.pt_tune_lr = ml_collections.config_dict.placeholder(float)
  c.pt_eval_examples = 512    # validation examples each masked accuracy uses (0: the whole α half)
  c.seed = 0
  c.model = ml_collections.ConfigDict({"C": 8, "primitives": "darts", "stem": "tile"})
  # One optimizer protocol for every method, sized for 300 steps: weight lr 0.1 (PC-DARTS' and DrNAS'; at
  # DARTS' 0.025 the supernet had not learnt the receptive-field task by the end) and α lr 3e-3.
  c.hparams = bilevel.hparams_config(w_lr=0.1, a_lr=3e-3)
  c.step_backend = "fused"
  c.num_devices = 1
  c.bn_stats = "global"
  c.checkpoint_every = 0
  c.num_candidates = 20
  c.log_every = 10
  c.progress = False
  c.tensorboard = False
  return c


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = {a.strip() for a in arg.split(",") if a.strip()}
  unknown = args - {"receptive_field", "dark_pixels", "suite", "smoke"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {', '.join(sorted(unknown))}; use receptive_field, "
                     "dark_pixels, suite and/or smoke")
  named = [t for t in ("receptive_field", "dark_pixels") if t in args]
  search = search_config(named[0] if named else "receptive_field")
  if "smoke" in args:
    search.epochs, search.steps_per_epoch, search.eval_examples, search.pt_eval_examples = 2, 3, 64, 64
  if "suite" not in args:
    return search
  c = ml_collections.ConfigDict()
  c.search = search
  c.tasks = named or ["receptive_field", "dark_pixels"]
  c.methods = tuple(GRADIENT_METHODS)
  c.seeds = (0, 1, 2)          # a tuple, so that --config.seeds="(0,)" can override it
  c.check_steps = 1000         # steps of each op trained alone in the task check (0: skip the check)
  if "smoke" in args:
    c.methods, c.seeds, c.check_steps = ("darts", "gdas"), (0, 1), 20
  return c
