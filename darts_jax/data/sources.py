"""Loading image-classification datasets by name into host memory.

A dataset is held as a uint8 NHWC numpy array of images and an int32 array of labels. Names:

* ``fashion_mnist``: the four gzip IDX files, read from ``$DARTS_JAX_FASHION_MNIST_DIR`` or
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``), else from TFDS; an explicit
  ``data_dir`` is the only place looked in (its IDX files or a TFDS copy there), or an error names it.
* any TFDS image-classification name (``cifar10``, ``cifar100``, ``svhn_cropped``, ``mnist``, ...).
* ``npz:/path/file.npz`` with arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``.
* ``folder:/path`` laid out as ``path/{train,test}/<class_name>/<image>``.
* ``synthetic:NAME``: a task generated from a seed whose right op is known (`darts_jax.data.synthetic`).

Every expected user-facing problem is raised as `DataError` with a one-line message; TensorFlow and TFDS are
imported only when a TFDS dataset is actually needed, because importing them takes seconds.
"""
from __future__ import annotations

import gzip
import os
import zipfile
from typing import Mapping, Sequence

import numpy as np

from darts_jax.data import synthetic
from darts_jax.data.dataset import DataError, Dataset

SPLITS = ("train", "test")
FASHION_MNIST_ENV = "DARTS_JAX_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_TFDS_READ_BATCH = 4096
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_UNKNOWN_NAME = ("unknown dataset {name!r}: use fashion_mnist, a TFDS image-classification name (cifar10, "
                 "cifar100, svhn_cropped, ...), npz:/path/file.npz, folder:/path or synthetic:NAME")


def _one_line(text: object, limit: int = 200) -> str:
  line = " ".join(str(text).split())
  return line if len(line) <= limit else line[:limit - 3] + "..."


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
  """Reads an IDX file (the MNIST format), gzip-compressed if the name ends in ``.gz``.

  Args:
    path: the file.
    expected_magic: if given, the header's magic number must equal it (2051 for uint8 image tensors of rank 3,
      2049 for uint8 label vectors).

  Returns:
    The array with the dims of the header, in native byte order.

  Raises:
    DataError: the file is unreadable, or the header is invalid or does not match the file size.
  """
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f"cannot read IDX file {path}: {_one_line(e)}") from e
  if len(raw) < 4:
    raise DataError(f"corrupt IDX file {path}: {len(raw)} bytes, too short for a header")
  magic = int.from_bytes(raw[:4], "big")
  zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
  if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
    raise DataError(f"corrupt IDX file {path}: bad magic number {magic} (0x{magic:08x})")
  if expected_magic is not None and magic != expected_magic:
    raise DataError(f"unexpected IDX file {path}: magic number {magic}, expected {expected_magic}")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"corrupt IDX file {path}: truncated header")
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[code])
  expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) != expected:
    raise DataError(f"corrupt IDX file {path}: header dims {dims} need {expected} bytes, file has {len(raw)}")
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
  return data.astype(dtype.newbyteorder("="), copy=True)


def load_dataset(name: str, split: str, data_dir: str | None = None, download: bool = False,
                 synthetic_params: Mapping[str, object] | None = None) -> Dataset:
  """Loads one split of a dataset by name (see the module docstring for the names).

  Args:
    name: ``fashion_mnist``, a TFDS image-classification name, ``npz:/path/file.npz`` or ``folder:/path``.
    split: "train" or "test".
    data_dir: for ``fashion_mnist``, the folder holding the IDX files or a TFDS copy (the only place looked in:
      without them there, `DataError` names it); for TFDS names, the TFDS data directory (TFDS' default if
      None).
    download: let TFDS download and prepare the data if it is not prepared yet (needs internet).
    synthetic_params: for ``synthetic:`` names, the task's parameters (`synthetic.TaskParams` fields).

  Returns:
    The split as a `Dataset`.

  Raises:
    DataError: unknown name, missing or malformed data.
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
  name = name.strip()
  if name.startswith("npz:"):
    return _load_npz(name, name[len("npz:"):], split)
  if name.startswith("folder:"):
    return _load_folder(name, name[len("folder:"):], split)
  if name.startswith(synthetic.PREFIX):
    return synthetic.load(name, split, synthetic_params)
  if name.lower().replace("-", "_") == "fashion_mnist":
    return _load_fashion_mnist(split, data_dir, download)
  if not name:
    raise DataError(_UNKNOWN_NAME.format(name=name))
  return _load_tfds(name, split, data_dir, download)


def fashion_mnist_dirs(data_dir: str | None = None) -> list[str]:
  """The folders searched for the Fashion-MNIST IDX files, in order (an explicit `data_dir` alone)."""
  if data_dir:
    return [os.path.expanduser(data_dir)]
  dirs = [os.environ.get(FASHION_MNIST_ENV), FASHION_MNIST_DEFAULT_DIR]
  return list(dict.fromkeys(os.path.expanduser(d) for d in dirs if d))


def _find_idx(folder: str, stem: str) -> str | None:
  for candidate in (stem + ".gz", stem):
    path = os.path.join(folder, candidate)
    if os.path.isfile(path):
      return path
  return None


def _load_fashion_mnist(split: str, data_dir: str | None, download: bool) -> Dataset:
  if data_dir:
    return _load_fashion_mnist_from(split, os.path.expanduser(data_dir), download)
  searched = fashion_mnist_dirs()
  for folder in searched:
    paths = [_find_idx(folder, stem) for stem in _FASHION_MNIST_FILES[split]]
    if all(paths):
      return load_idx_pair(paths[0], paths[1], name="fashion_mnist", num_classes=10,
                           class_names=FASHION_MNIST_CLASSES)
  try:
    return _load_tfds("fashion_mnist", split, None, download)
  except DataError as e:
    if download:
      raise
    raise DataError(
        f"Fashion-MNIST {split} IDX files not found in {', '.join(searched)} and TFDS has no prepared copy "
        f"({_tfds_dir(None)}): run `apt-get install dataset-fashion-mnist`, set {FASHION_MNIST_ENV} or "
        f"pass data_dir=<folder with the *-ubyte.gz files>") from e


def _load_fashion_mnist_from(split: str, folder: str, download: bool) -> Dataset:
  """Fashion-MNIST from an explicit `data_dir` only: its IDX files, else a TFDS copy prepared there (or
  downloaded there with `download`); never another folder, whose data would not be the data asked for."""
  paths = [_find_idx(folder, stem) for stem in _FASHION_MNIST_FILES[split]]
  if all(paths):
    return load_idx_pair(paths[0], paths[1], name="fashion_mnist", num_classes=10,
                         class_names=FASHION_MNIST_CLASSES)
  if download or os.path.isdir(os.path.join(folder, "fashion_mnist")):   # TFDS' layout: <dir>/<name>/<version>
    return _load_tfds("fashion_mnist", split, folder, download)
  state = "does not exist" if not os.path.exists(folder) else "holds neither them nor a TFDS fashion_mnist copy"
  files = " and ".join(f"{stem}[.gz]" for stem in _FASHION_MNIST_FILES[split])
  others = ", ".join(d for d in (os.environ.get(FASHION_MNIST_ENV), FASHION_MNIST_DEFAULT_DIR) if d)
  raise DataError(f"data_dir={folder} has no Fashion-MNIST {split} files ({files}): it {state}; put them "
                  f"there, or leave data_dir empty to read {others} (`apt-get install dataset-fashion-mnist`)")


def load_idx_pair(images_path: str, labels_path: str, name: str, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None) -> Dataset:
  """Builds a `Dataset` from an IDX image file (magic 2051) and an IDX label file (magic 2049)."""
  images = read_idx(images_path, expected_magic=2051)
  labels = read_idx(labels_path, expected_magic=2049)
  if len(images) != len(labels):
    raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if len(labels) else 1
  if len(labels) and int(labels.max()) >= num_classes:
    raise DataError(f"{labels_path}: label {int(labels.max())} out of range for {num_classes} classes")
  return Dataset(images[..., None], labels.astype(np.int32), num_classes, name,
                 tuple(class_names) if class_names else None)


def _tfds_dir(data_dir: str | None) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"


def _import_tfds():
  """Imports tensorflow_datasets, keeping TensorFlow off the GPU so that it leaves the memory to JAX."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
      pass  # Devices were already initialized; nothing more can be done here.
  except ImportError:
    pass
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("tensorflow_datasets is not installed: pip install tensorflow-datasets, or use "
                    "fashion_mnist, npz:/path/file.npz or folder:/path") from e
  return tfds


def _load_tfds(name: str, split: str, data_dir: str | None, download: bool) -> Dataset:
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(_UNKNOWN_NAME.format(name=name)) from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"cannot open TFDS dataset {name!r}: {_one_line(e)}") from e
  features = builder.info.features
  keys = set(features.keys()) if hasattr(features, "keys") else set()
  if not {"image", "label"} <= keys or not isinstance(features["label"], tfds.features.ClassLabel):
    raise DataError(f"TFDS dataset {name!r} is not an image-classification dataset (needs features 'image' "
                    f"and a ClassLabel 'label', has {sorted(keys)})")
  shape = tuple(features["image"].shape)
  if len(shape) != 3 or any(d is None for d in shape):
    raise DataError(f"TFDS dataset {name!r} has images of variable size {shape}: only fixed-size images are "
                    "supported")
  available = list(builder.info.splits.keys())
  tfds_split = split
  if split == "test" and available and "test" not in available and "validation" in available:
    tfds_split = "validation"
  if available and tfds_split not in available:
    raise DataError(f"TFDS dataset {name!r} has no {split!r} split (has {', '.join(available)})")
  if download:
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"downloading TFDS dataset {name!r} into {_tfds_dir(data_dir)} failed: "
                      f"{_one_line(e)}") from e
  try:
    ds = builder.as_dataset(split=tfds_split).map(lambda ex: {"image": ex["image"], "label": ex["label"]})
    chunks = list(tfds.as_numpy(ds.batch(_TFDS_READ_BATCH)))
  except AssertionError as e:
    raise DataError(f"TFDS dataset {name!r} is not prepared in {_tfds_dir(data_dir)}: pass download=True "
                    f"(needs internet), or run `tfds build {name} --data_dir=DIR` where there is internet, "
                    "copy DIR here and pass data_dir=DIR") from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"reading TFDS dataset {name!r} ({tfds_split}) failed: {_one_line(e)}") from e
  if not chunks:
    raise DataError(f"TFDS dataset {name!r} has no examples in its {tfds_split!r} split")
  images = np.concatenate([c["image"] for c in chunks])
  labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32)
  if images.dtype != np.uint8:
    raise DataError(f"TFDS dataset {name!r} has {images.dtype} images: only uint8 images are supported")
  label_feature = features["label"]
  names = tuple(label_feature.names) if label_feature.names else None
  return Dataset(images, labels, int(label_feature.num_classes), name, names)


def to_uint8_images(x: np.ndarray, source: str) -> np.ndarray:
  """Converts [N,H,W] or [N,H,W,C] images to uint8 NHWC.

  Integer arrays must lie in [0, 255]; float arrays in [0, 1] (scaled by 255) or, if their maximum exceeds 1,
  in [0, 255].

  Args:
    x: the images.
    source: where they came from, for error messages.

  Returns:
    uint8 [N, H, W, C].
  """
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise DataError(f"{source}: images must be [N,H,W] or [N,H,W,C], got shape {x.shape}")
  if x.shape[1] in (1, 3) and x.shape[3] > 4:
    raise DataError(f"{source}: images of shape {x.shape} look channels-first; transpose them to NHWC")
  if x.dtype == np.uint8:
    return np.ascontiguousarray(x)
  if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
    raise DataError(f"{source}: images must be integer or float, got {x.dtype}")
  if x.size == 0:
    return np.zeros(x.shape, np.uint8)
  lo, hi = float(x.min()), float(x.max())
  if not np.isfinite(lo) or not np.isfinite(hi) or lo < 0 or hi > 255:
    raise DataError(f"{source}: image values must lie in [0, 1] or [0, 255], found [{lo}, {hi}]")
  if np.issubdtype(x.dtype, np.floating):
    x = np.rint(x * 255.0) if hi <= 1.0 else np.rint(x)
  return x.astype(np.uint8)


def _to_labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.shape != (n,):
    raise DataError(f"{source}: labels must have shape ({n},) to match the images, got {y.shape}")
  if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)) or y.dtype == np.bool_:
    raise DataError(f"{source}: labels must be integers, got {y.dtype}")
  if n and np.issubdtype(y.dtype, np.floating) and not np.all(np.rint(y) == y):
    raise DataError(f"{source}: labels must be integers, found non-integral floats")
  if n and y.min() < 0:
    raise DataError(f"{source}: labels must be >= 0, found {y.min()}")
  return y.astype(np.int32)


def _load_npz(name: str, path: str, split: str) -> Dataset:
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(f"npz file not found: {path!r} (name {name!r})")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise DataError(f"cannot read npz file {path}: {_one_line(e)}") from e
  if "x" not in arrays or "y" not in arrays:
    raise DataError(f"{path} must hold arrays 'x' and 'y' (found {', '.join(sorted(arrays)) or 'none'})")
  x_key, y_key = ("x", "y") if split == "train" else ("x_test", "y_test")
  if x_key not in arrays or y_key not in arrays:
    raise DataError(f"{path} has no test split: add arrays 'x_test' and 'y_test'")
  images = to_uint8_images(arrays[x_key], f"{path}[{x_key!r}]")
  labels = _to_labels(arrays[y_key], len(images), f"{path}[{y_key!r}]")
  label_sets = [arrays["y"]] + ([arrays["y_test"]] if "y_test" in arrays else [])
  num_classes = max((int(np.max(y)) + 1 for y in label_sets if np.size(y)), default=1)
  if "num_classes" in arrays:
    declared = int(arrays["num_classes"])
    if declared < num_classes:
      raise DataError(f"{path}: num_classes={declared} but labels go up to {num_classes - 1}")
    num_classes = declared
  return Dataset(images, labels, num_classes, name)


def _list_classes(split_dir: str) -> list[str]:
  return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _read_image(path: str) -> np.ndarray:
  """Reads one image as uint8 [H, W, C] with C in {1, 3}."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:
    Image = None  # pylint: disable=invalid-name
  try:
    if Image is not None:
      with Image.open(path) as img:
        img = img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
        x = np.asarray(img)
    else:
      import matplotlib.image  # pylint: disable=g-import-not-at-top
      x = matplotlib.image.imread(path)
      if x.dtype != np.uint8:
        x = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
      if x.ndim == 3 and x.shape[-1] == 4:
        x = x[..., :3]
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"cannot read image {path}: {_one_line(e)}") from e
  return x[..., None] if x.ndim == 2 else x


def _load_folder(name: str, root: str, split: str) -> Dataset:
  root = os.path.expanduser(root)
  train_dir, split_dir = os.path.join(root, "train"), os.path.join(root, split)
  if not os.path.isdir(train_dir):
    raise DataError(f"folder dataset {root!r} needs a 'train' subfolder with one folder per class")
  if not os.path.isdir(split_dir):
    raise DataError(f"folder dataset {root!r} has no {split!r} subfolder")
  classes = _list_classes(train_dir)
  if not classes:
    raise DataError(f"folder dataset {root!r}: {train_dir} has no class folders")
  class_ids = {c: i for i, c in enumerate(classes)}
  files, labels = [], []
  for c in _list_classes(split_dir):
    if c not in class_ids:
      raise DataError(f"folder dataset {root!r}: class {c!r} in {split} is not a class folder of train")
    class_dir = os.path.join(split_dir, c)
    for f in sorted(os.listdir(class_dir)):
      if f.lower().endswith(_IMAGE_EXTENSIONS) and not f.startswith("."):
        files.append(os.path.join(class_dir, f))
        labels.append(class_ids[c])
  if not files:
    raise DataError(f"folder dataset {root!r}: no images ({', '.join(_IMAGE_EXTENSIONS)}) under {split_dir}")
  images, size = [], None
  for path in files:
    x = _read_image(path)
    if size is None:
      size = x.shape[:2]
    elif x.shape[:2] != size:
      raise DataError(f"folder dataset {root!r}: {path} is {x.shape[1]}x{x.shape[0]} (WxH), expected "
                      f"{size[1]}x{size[0]} like {files[0]}; all images must have the same size")
    images.append(x)
  if len({x.shape[-1] for x in images}) > 1:
    images = [np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x for x in images]
  return Dataset(np.stack(images), np.asarray(labels, np.int32), len(classes), name, tuple(classes))
