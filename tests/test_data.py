"""Tests for darts_jax.data: loading, IDX parsing, splits, augmentation, resumable batching and prefetch."""
from __future__ import annotations

import gzip
import os
import threading

import numpy as np
import pytest

from darts_jax import data
from darts_jax.data import sources

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")


def _fashion_dir() -> str | None:
  for folder in data.fashion_mnist_dirs():
    if all(os.path.isfile(os.path.join(folder, f)) for f in FASHION_FILES):
      return folder
  return None


@pytest.fixture(scope="module")
def fashion():
  if _fashion_dir() is None:
    message = f"Fashion-MNIST IDX files not found in {data.fashion_mnist_dirs()}"
    if os.environ.get("CI"):
      pytest.fail(message + " (CI is set: install dataset-fashion-mnist)")
    pytest.skip(message)
  return data.load_dataset("fashion_mnist", "train"), data.load_dataset("fashion_mnist", "test")


def _tiny(n: int = 50, shape=(8, 8, 3), seed: int = 0) -> data.Dataset:
  """A dataset whose label is the example index, so batches tell which examples they hold."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n,) + shape, dtype=np.uint8)
  return data.Dataset(images, np.arange(n, dtype=np.int32), n, "tiny")


def _write_idx(path, array: np.ndarray, magic: int, compress: bool = True, corrupt: bool = False) -> None:
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  if corrupt:
    header = b"\x01\x02" + header[2:]
  raw = header + array.astype(np.uint8).tobytes()
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(raw)


# Loading.


def test_fashion_mnist_real(fashion):
  train, test = fashion
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.num_classes == test.num_classes == 10
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.full(10, 1000))
  assert train.images.max() == 255 and train.images.min() == 0
  mean, std = data.channel_stats(train.images)
  np.testing.assert_allclose(mean, [0.2860], atol=1e-3)
  np.testing.assert_allclose(std, [0.3530], atol=1e-3)


def test_read_idx_roundtrip_and_errors(tmp_path):
  images = np.arange(3 * 4 * 5).reshape(3, 4, 5) % 256
  _write_idx(tmp_path / "a.gz", images, 2051)
  _write_idx(tmp_path / "b", images[:, 0, 0], 2049, compress=False)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "a.gz"), expected_magic=2051), images)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "b")), images[:, 0, 0])
  with pytest.raises(data.DataError, match="magic number 2051, expected 2049"):
    data.read_idx(str(tmp_path / "a.gz"), expected_magic=2049)
  _write_idx(tmp_path / "bad.gz", images, 2051, corrupt=True)
  with pytest.raises(data.DataError, match="corrupt IDX"):
    data.read_idx(str(tmp_path / "bad.gz"))
  raw = gzip.open(tmp_path / "a.gz").read()
  with gzip.open(tmp_path / "short.gz", "wb") as f:
    f.write(raw[:-7])
  with pytest.raises(data.DataError, match="need"):
    data.read_idx(str(tmp_path / "short.gz"))
  (tmp_path / "notgz.gz").write_bytes(b"plain bytes")
  with pytest.raises(data.DataError, match="cannot read"):
    data.read_idx(str(tmp_path / "notgz.gz"))


def test_fashion_mnist_data_dir_takes_precedence(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 6), ("t10k", 4)):
    _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n), 2049)
  train = data.load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))
  test = data.load_dataset("fashion_mnist", "test", data_dir=str(tmp_path))
  assert train.images.shape == (6, 28, 28, 1) and test.images.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(test.labels, np.arange(4))
  assert train.num_classes == 10 and train.class_names[9] == "Ankle boot"


def test_fashion_mnist_missing_raises_one_line(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "FASHION_MNIST_DEFAULT_DIR", str(tmp_path / "nowhere"))
  monkeypatch.delenv(sources.FASHION_MNIST_ENV, raising=False)
  with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist") as info:
    data.load_dataset("fashion_mnist", "train", data_dir=str(tmp_path / "empty"))
  assert "\n" not in str(info.value) and str(tmp_path / "nowhere") in str(info.value)
  assert not (tmp_path / "empty").exists()


def test_tfds_mock_cifar10():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=8):
    train = data.load_dataset("cifar10", "train")
    test = data.load_dataset("cifar10", "test")
  for ds in (train, test):
    assert ds.images.shape == (8, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10
    assert ds.labels.min() >= 0 and ds.labels.max() < 10


def test_tfds_errors(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DataError, match="unknown dataset 'no_such_dataset_xyz'"):
    data.load_dataset("no_such_dataset_xyz", "train")
  with pytest.raises(data.DataError, match="not prepared") as info:
    data.load_dataset("cifar10", "train", data_dir=str(tmp_path))
  assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
  with pytest.raises(data.DataError, match="not an image-classification"):
    data.load_dataset("imdb_reviews", "train", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="unknown split"):
    data.load_dataset("cifar10", "validation")


def test_npz_dataset(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
  x_test = rng.random((3, 5, 4, 1))
  path = tmp_path / "d.npz"
  np.savez(path, x=x, y=np.array([0, 1, 2, 0, 1, 2]), x_test=x_test, y_test=np.array([[3], [0], [1]]))
  train = data.load_dataset(f"npz:{path}", "train")
  test = data.load_dataset(f"npz:{path}", "test")
  np.testing.assert_array_equal(train.images[..., 0], x)
  np.testing.assert_array_equal(test.images, np.rint(x_test * 255).astype(np.uint8))
  np.testing.assert_array_equal(test.labels, [3, 0, 1])
  assert train.num_classes == test.num_classes == 4 and test.labels.dtype == np.int32
  np.savez(tmp_path / "scaled.npz", x=x.astype(np.float32), y=np.zeros(6))
  np.testing.assert_array_equal(data.load_dataset(f"npz:{tmp_path / 'scaled.npz'}", "train").images[..., 0], x)
  np.savez(tmp_path / "notest.npz", x=x, y=np.zeros(6, int))
  with pytest.raises(data.DataError, match="no test split"):
    data.load_dataset(f"npz:{tmp_path / 'notest.npz'}", "test")
  np.savez(tmp_path / "bad.npz", x=x, y=np.zeros(5, int))
  with pytest.raises(data.DataError, match="labels must have shape"):
    data.load_dataset(f"npz:{tmp_path / 'bad.npz'}", "train")
  np.savez(tmp_path / "range.npz", x=x.astype(np.float32) * 2, y=np.zeros(6, int))
  with pytest.raises(data.DataError, match=r"\[0, 255\]"):
    data.load_dataset(f"npz:{tmp_path / 'range.npz'}", "train")
  with pytest.raises(data.DataError, match="not found"):
    data.load_dataset(f"npz:{tmp_path / 'missing.npz'}", "train")


def test_folder_dataset(tmp_path):
  image_module = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(0)
  expected = {}
  for split, per_class in (("train", 3), ("test", 2)):
    for name in ("dog", "cat", "bird"):
      os.makedirs(tmp_path / split / name)
      for i in range(per_class):
        x = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        image_module.fromarray(x).save(tmp_path / split / name / f"{i}.png")
        expected[(split, name, i)] = x
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  train = data.load_dataset(f"folder:{tmp_path}", "train")
  test = data.load_dataset(f"folder:{tmp_path}", "test")
  assert train.class_names == ("bird", "cat", "dog") and train.num_classes == 3
  assert train.images.shape == (9, 6, 7, 3) and test.images.shape == (6, 6, 7, 3)
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(test.images[2], expected[("test", "cat", 0)])
  image_module.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "test" / "dog" / "9.png")
  with pytest.raises(data.DataError, match=r"dog/9\.png"):
    data.load_dataset(f"folder:{tmp_path}", "test")
  with pytest.raises(data.DataError, match="'train' subfolder"):
    data.load_dataset(f"folder:{tmp_path / 'train'}", "train")


# Splits and subsets.


def test_search_split():
  train_idx, val_idx = data.search_split(101, train_portion=0.5)
  np.testing.assert_array_equal(train_idx, np.arange(50))
  np.testing.assert_array_equal(val_idx, np.arange(50, 101))
  a, b = data.search_split(_tiny(40), 0.25, seed=3, shuffle=True)
  assert len(a) == 10 and len(b) == 30 and not set(a) & set(b)
  assert sorted(np.concatenate([a, b])) == list(range(40)) and not np.array_equal(a, np.arange(10))
  with pytest.raises(data.DataError):
    data.search_split(10, train_portion=1.0)


def test_subset_is_stratified_and_deterministic():
  labels = np.repeat(np.arange(4), [40, 20, 20, 20]).astype(np.int32)
  ds = data.Dataset(np.zeros((100, 2, 2, 1), np.uint8), labels, 4, "d")
  small = data.subset(ds, 20, seed=1)
  np.testing.assert_array_equal(np.bincount(small.labels, minlength=4), [8, 4, 4, 4])
  np.testing.assert_array_equal(data.subset_indices(labels, 20, seed=1), data.subset_indices(labels, 20, seed=1))
  assert not np.array_equal(data.subset_indices(labels, 20, seed=1), data.subset_indices(labels, 20, seed=2))
  np.testing.assert_array_equal(data.subset(ds, 5, stratified=False).labels, labels[:5])
  assert len(data.subset(ds, 1000)) == 100


# Augmentation and normalization.


def test_crop_keeps_shape_and_shifts():
  images = _tiny(4, (6, 6, 1)).images
  aug = data.Augmentation(pad=2, flip=False)
  params = data.AugmentationParams(dy=np.array([0, 2, 4, 1]), dx=np.array([0, 2, 4, 3]),
                                   flip=np.zeros(4, bool), cy=np.zeros(4, int), cx=np.zeros(4, int))
  out = data.apply_augmentation(images, params, aug, mean=[0.0], std=[1.0 / 255])
  assert out.shape == images.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out[0, 2:, 2:], images[0, :4, :4])
  np.testing.assert_array_equal(out[0, :2], 0)
  np.testing.assert_array_equal(out[1], images[1])
  np.testing.assert_array_equal(out[2, :4, :4], images[2, 2:, 2:])
  np.testing.assert_array_equal(out[3, 1:, :5], images[3, :5, 1:])
  np.testing.assert_array_equal(out[3, 0], 0)
  random_out = data.augment(images, np.random.default_rng(0), [0.0], [1.0], aug)
  assert random_out.shape == images.shape
  np.testing.assert_array_equal(random_out, data.augment(images, np.random.default_rng(0), [0.0], [1.0], aug))


def test_flip_really_flips():
  image = np.zeros((1, 4, 5, 1), np.uint8)
  image[0, :, 0] = 255
  params = data.AugmentationParams(np.zeros(1, int), np.zeros(1, int), np.ones(1, bool), np.zeros(1, int),
                                   np.zeros(1, int))
  out = data.apply_augmentation(image, params, data.Augmentation(pad=0), [0.0], [1.0])
  np.testing.assert_array_equal(out[0, :, :, 0], image[0, :, ::-1, 0] / 255.0)
  assert out[0, 0, 4, 0] == 1.0 and out[0, 0, 0, 0] == 0.0
  no_flip = data.sample_augmentation(np.random.default_rng(0), 100, 4, 5, data.Augmentation(flip=False))
  flips = data.sample_augmentation(np.random.default_rng(0), 100, 4, 5, data.Augmentation())
  assert not no_flip.flip.any() and 20 < flips.flip.sum() < 80


def test_cutout_zeroes_a_square_in_normalized_space():
  images = np.full((3, 10, 10, 2), 200, np.uint8)
  aug = data.Augmentation(pad=0, flip=False, cutout=4)
  params = data.AugmentationParams(np.zeros(3, int), np.zeros(3, int), np.zeros(3, bool), np.array([5, 0, 9]),
                                   np.array([5, 0, 9]))
  out = data.apply_augmentation(images, params, aug, mean=[0.5, 0.5], std=[0.25, 0.25])
  assert np.all(out[0, 3:7, 3:7] == 0) and (out[0] == 0).sum() == 16 * 2
  assert np.all(out[1, :2, :2] == 0) and (out[1] == 0).sum() == 4 * 2
  assert np.all(out[2, 7:, 7:] == 0) and (out[2] == 0).sum() == 9 * 2
  np.testing.assert_allclose(out[0, 0, 0], (200 / 255 - 0.5) / 0.25, rtol=1e-6)


@pytest.mark.parametrize("shape,aug", [((40, 9, 7, 3), data.Augmentation(pad=3, cutout=5)),
                                       ((40, 6, 6, 1), data.Augmentation(pad=0)),
                                       ((40, 5, 8, 2), data.Augmentation(pad=4, flip=False, cutout=4))])
def test_augmentation_matches_reference_transforms(shape, aug):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  params = data.sample_augmentation(rng, shape[0], shape[1], shape[2], aug)
  mean, std = rng.random(shape[-1]), rng.random(shape[-1]) + 0.1
  out = data.apply_augmentation(images, params, aug, mean, std)
  p, h, w, half = aug.pad, shape[1], shape[2], aug.cutout // 2
  for i in range(shape[0]):
    dy, dx = params.dy[i], params.dx[i]
    crop = np.pad(images[i], ((p, p), (p, p), (0, 0)))[dy:dy + h, dx:dx + w]
    if params.flip[i]:
      crop = crop[:, ::-1]
    expected = (crop / 255.0 - mean) / std
    if aug.cutout:
      y, x = params.cy[i], params.cx[i]
      rows = slice(np.clip(y - half, 0, h), np.clip(y + half, 0, h))
      expected[rows, np.clip(x - half, 0, w):np.clip(x + half, 0, w)] = 0
    np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-5)


def test_normalization_uses_training_stats(fashion):
  train, _ = fashion
  mean, std = data.channel_stats(train.images)
  normalized = data.normalize(train.images, mean, std)
  assert normalized.dtype == np.float32
  assert abs(float(normalized.mean(dtype=np.float64))) < 1e-3
  assert abs(float(normalized.std(dtype=np.float64)) - 1.0) < 1e-3


def test_channel_stats_matches_numpy():
  images = _tiny(30, (5, 4, 3)).images
  mean, std = data.channel_stats(images)
  np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0) / 255, rtol=1e-5)
  np.testing.assert_allclose(std, images.reshape(-1, 3).std(0) / 255, rtol=1e-5)


# Batching.


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))


def test_batch_iterator_epochs_cover_indices():
  ds = _tiny(50)
  idx = np.arange(5, 45)
  it = data.BatchIterator(ds, 8, idx, shuffle=True, seed=0)
  assert it.steps_per_epoch == 5
  for _ in range(2):
    labels = np.concatenate([b["label"] for b in it.epoch_batches()])
    np.testing.assert_array_equal(np.sort(labels), idx)
  assert it.state() == {"epoch": 2, "step": 0}
  batch = next(it)
  assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  ordered = data.BatchIterator(ds, 16, idx, shuffle=False, drop_remainder=True)
  assert ordered.steps_per_epoch == 2
  np.testing.assert_array_equal(next(ordered)["label"], idx[:16])
  ragged = data.BatchIterator(ds, 16, idx, shuffle=False, drop_remainder=False, num_epochs=1)
  assert [len(b["label"]) for b in ragged] == [16, 16, 8]


def test_batch_iterator_resumes_exactly():
  ds = _tiny(50)
  kwargs = dict(shuffle=True, augment=data.Augmentation(pad=2, cutout=3), seed=7)
  full = data.BatchIterator(ds, 8, **kwargs)
  uninterrupted = _take(full, 6 + 3 + 10)[9:]
  resumed = data.BatchIterator(ds, 8, start={"epoch": 1, "step": 3}, **kwargs)
  assert resumed.state() == {"epoch": 1, "step": 3}
  _assert_same_batches(_take(resumed, 10), uninterrupted)
  _assert_same_batches(_take(full.iterator_at(1, 3), 10), uninterrupted)
  other = data.BatchIterator(ds, 8, start=full.state(), **kwargs)
  _assert_same_batches(_take(other, 2), _take(full, 2))
  different_seed = data.BatchIterator(ds, 8, start=(1, 3), **{**kwargs, "seed": 8})
  assert not np.array_equal(next(different_seed)["label"], uninterrupted[0]["label"])
  same_order = data.BatchIterator(ds, 8, start=(1, 3), **{**kwargs, "augment": False})
  batch = next(same_order)
  np.testing.assert_array_equal(batch["label"], uninterrupted[0]["label"])
  assert not np.allclose(batch["image"], uninterrupted[0]["image"])


def test_eval_batches_cover_everything_with_mask():
  ds = _tiny(23)
  mean, std = data.channel_stats(ds.images)
  batches = list(data.eval_batches(ds, 10, mean=mean, std=std))
  assert [b["image"].shape for b in batches] == [(10, 8, 8, 3)] * 3
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1.0] * 23 + [0.0] * 7)
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels[mask == 1], np.arange(23))
  np.testing.assert_array_equal(batches[-1]["image"][3:], 0)
  np.testing.assert_allclose(batches[0]["image"], data.normalize(ds.images[:10], mean, std))
  sub = list(data.eval_batches((ds.images, ds.labels), 4, mean=mean, std=std, indices=np.array([3, 1, 2])))
  assert len(sub) == 1
  np.testing.assert_array_equal(sub[0]["label"][:3], [3, 1, 2])


# Prefetch.


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name.startswith("darts_jax-prefetch")]


def test_prefetch_same_items_and_clean_stop():
  ds = _tiny(50)
  reference = _take(data.BatchIterator(ds, 8, augment=True, seed=1), 12)
  prefetched = data.prefetch(data.BatchIterator(ds, 8, augment=True, seed=1, num_epochs=2), size=3,
                             device_put=False)
  _assert_same_batches(list(prefetched), reference)
  closed = threading.Event()

  def endless():
    try:
      yield from data.BatchIterator(ds, 8, seed=1)
    finally:
      closed.set()

  stream = data.prefetch(endless(), size=2, device_put=False)
  _assert_same_batches(_take(stream, 3), _take(data.BatchIterator(ds, 8, seed=1), 3))
  assert any(t.is_alive() for t in _prefetch_threads())
  stream.close()
  assert closed.wait(timeout=5)
  for t in _prefetch_threads():
    t.join(timeout=5)
  assert not any(t.is_alive() for t in _prefetch_threads())


def test_prefetch_device_put():
  jax = pytest.importorskip("jax")
  ds = _tiny(20)
  items = list(data.prefetch(data.BatchIterator(ds, 4, seed=0, num_epochs=1)))
  assert all(isinstance(b["image"], jax.Array) for b in items)
  _assert_same_batches(items, list(data.BatchIterator(ds, 4, seed=0, num_epochs=1)))


def test_prefetch_propagates_errors():

  def source():
    yield 1
    yield 2
    raise RuntimeError("broken source")

  stream = data.prefetch(source(), device_put=False)
  assert next(stream) == 1 and next(stream) == 2
  with pytest.raises(RuntimeError, match="broken source"):
    next(stream)


def test_measure_throughput():
  rate = data.measure_throughput(data.BatchIterator(_tiny(50), 8, augment=True), 20)
  assert rate > 0


def test_resize_images_keeps_constant_images_and_averages_edges():
  flat = np.full((2, 28, 28, 1), 77, np.uint8)
  out = data.resize_images(flat, 16)
  assert out.shape == (2, 16, 16, 1) and out.dtype == np.uint8 and (out == 77).all()
  stripes = np.zeros((1, 4, 4, 2), np.uint8)
  stripes[..., :2, 0] = 200                       # left half bright in channel 0 only
  half = data.resize_images(stripes, 2)
  left, right = half[0, :, 0, 0].astype(int), half[0, :, 1, 0].astype(int)
  assert (left > right).all() and (abs(left + right - 200) <= 1).all()   # antialiased: the mean is kept
  assert (half[..., 1] == 0).all()
  assert data.resize_images(flat, 28) is flat
  with pytest.raises(ValueError, match="positive"):
    data.resize_images(flat, 0)
