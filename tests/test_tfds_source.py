"""Tests for sr_jax.data.tfds_source on a tiny TFDS dataset prepared offline in tmp_path.

The dataset, 'sr_jax_tiny_sr', mimics div2k/bicubic_x4: config 'bicubic_x2' holds RGB 'hr'
images and 'lr' = hr[::2, ::2], splits 'train' (5) and 'validation' (2); config 'gray_x2'
holds grayscale 'hr' and RGBA 'lr'. Its builder class is defined without registering it,
so the source is loaded the way a user's is: by name and data_dir, from the files alone.

TFDS shuffles examples when it writes them, so record i of a split is not the i-th generated
example; every example's height (8 + 2 * key) tells which one a record holds.
"""

import contextlib
import pathlib
import pickle
import subprocess
import sys
import warnings

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from sr_jax.data import tfds_source

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "sr_jax_tiny_sr"
RGB = f"{NAME}/bicubic_x2"
SPLIT_SIZES = {"train": 5, "validation": 2}


def example(config: str, split: str, index: int) -> dict[str, np.ndarray]:
  """The stored uint8 images of one record (varying even sizes; lr is hr[::2, ::2])."""
  rng = np.random.default_rng([list(SPLIT_SIZES).index(split), index])
  h, w = 8 + 2 * index, 12
  if config == "bicubic_x2":
    hr = rng.integers(0, 256, (h, w, 3), np.uint8)
    return {"hr": hr, "lr": np.ascontiguousarray(hr[::2, ::2])}
  hr = rng.integers(0, 256, (h, w, 1), np.uint8)
  return {"hr": hr, "lr": rng.integers(0, 256, (h // 2, w // 2, 4), np.uint8)}


def tiny_builder_class() -> type:
  """A GeneratorBasedBuilder for 'sr_jax_tiny_sr', kept out of TFDS's global registry."""
  skip = getattr(tfds.core.registered, "skip_registration", contextlib.nullcontext)
  with skip():

    class SrJaxTinySr(tfds.core.GeneratorBasedBuilder):
      """Random images; _info avoids dataset_info_from_configs (it reads a package dir)."""

      VERSION = tfds.core.Version("1.0.0")
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="bicubic_x2"),
                         tfds.core.BuilderConfig(name="gray_x2")]

      def _info(self):
        channels = (3, 3) if self.builder_config.name == "bicubic_x2" else (1, 4)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "hr": tfds.features.Image(shape=(None, None, channels[0])),
            "lr": tfds.features.Image(shape=(None, None, channels[1]))}))

      def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

      def _generate_examples(self, split):
        for i in range(SPLIT_SIZES[split]):
          yield i, example(self.builder_config.name, split, i)

  return SrJaxTinySr


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  """{'array_record': data_dir with both configs, 'tfrecord': bicubic_x2 as tfrecord only}."""
  builder_class = tiny_builder_class()
  tfds.disable_progress_bar()
  dirs = {}
  for file_format, configs in (("array_record", ("bicubic_x2", "gray_x2")),
                               ("tfrecord", ("bicubic_x2",))):
    dirs[file_format] = str(tmp_path_factory.mktemp(file_format))
    for config in configs:
      builder = builder_class(config=config, data_dir=dirs[file_format],
                              file_format=file_format)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return dirs


@pytest.fixture(scope="module")
def data_dir(data_dirs):
  return data_dirs["array_record"]


def as_float(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) / np.float32(255)


def key_of(image: np.ndarray) -> int:
  """Which generated example an HR image (a record's 'image' or 'gt') comes from."""
  return (image.shape[-3] - 8) // 2


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_records_are_the_stored_images_as_float(data_dir, split):
  source = tfds_source.load_tfds_source(RGB, split, data_dir)
  paired = tfds_source.load_tfds_source(RGB, split, data_dir, lr_key="lr")
  assert len(source) == len(paired) == SPLIT_SIZES[split]
  assert list(source.names) == [f"{RGB}/{split}[{i}]" for i in range(len(source))]
  keys = []
  for i in range(len(source)):
    record, pair = source[i], paired[i]
    keys.append(key_of(record["image"]))
    stored = example("bicubic_x2", split, keys[-1])
    assert set(record) == {"image", "index"} and record["index"] == i
    assert set(pair) == {"image", "lq", "index"}
    for image in (record["image"], pair["image"], pair["lq"]):
      assert image.dtype == np.float32 and image.ndim == 3 and image.shape[-1] == 3
    np.testing.assert_array_equal(record["image"], as_float(stored["hr"]))
    np.testing.assert_array_equal(pair["image"], as_float(stored["hr"]))
    np.testing.assert_array_equal(pair["lq"], as_float(stored["lr"]))
    h, w, _ = pair["image"].shape
    assert pair["lq"].shape == (h // 2, w // 2, 3)
  assert sorted(keys) == list(range(len(source)))
  with pytest.raises(IndexError):
    source[len(source)]


def test_version_and_split_spec(data_dir):
  source = tfds_source.load_tfds_source(f"{RGB}:1.0.0", "train[1:3]+validation", data_dir)
  assert len(source) == 4
  whole = [tfds_source.load_tfds_source(RGB, split, data_dir) for split in SPLIT_SIZES]
  for i, (part, j) in enumerate([(0, 1), (0, 2), (1, 0), (1, 1)]):
    np.testing.assert_array_equal(source[i]["image"], whole[part][j]["image"])


def test_grayscale_and_rgba_are_converted_with_one_warning_per_key(data_dir):
  source = tfds_source.load_tfds_source(f"{NAME}/gray_x2", "train", data_dir, lr_key="lr")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    records = [source[i] for i in range(3)]
  messages = [str(w.message) for w in caught]
  assert len(messages) == 2, messages
  assert all(f"{NAME}/gray_x2" in m for m in messages)
  assert any("'hr'" in m for m in messages) and any("'lr'" in m for m in messages)
  for record in records:
    stored = example("gray_x2", "train", key_of(record["image"]))
    np.testing.assert_array_equal(record["image"], as_float(np.repeat(stored["hr"], 3, -1)))
    np.testing.assert_array_equal(record["lq"], as_float(stored["lr"][..., :3]))


def test_pickles_small_and_reopens_the_files(data_dir):
  source = tfds_source.load_tfds_source(RGB, "train", data_dir, lr_key="lr")
  source[0]
  data = pickle.dumps(source)
  assert len(data) < 2000  # Where the files are, not what they hold.
  copy = pickle.loads(data)
  assert len(copy) == len(source) and list(copy.names) == list(source.names)
  for i in range(len(source)):
    for key in ("image", "lq"):
      np.testing.assert_array_equal(copy[i][key], source[i][key])


def crop_corner(record):
  return {"gt": record["image"][:8, :8], "lq": record["lq"][:4, :4], "index": record["index"]}


def test_grain_shuffled_epoch_and_batches(data_dir):
  source = tfds_source.load_tfds_source(RGB, "train", data_dir, lr_key="lr")
  ds = grain.MapDataset.source(source).seed(0).shuffle().map(crop_corner)
  records = list(ds)
  order = [r["index"] for r in records]
  assert sorted(order) == list(range(5))
  assert order == [r["index"] for r in ds]  # Same seed, same order.
  batch = ds.batch(5)[0]
  assert batch["gt"].shape == (5, 8, 8, 3) and batch["lq"].shape == (5, 4, 4, 3)
  for row, index in enumerate(batch["index"]):
    np.testing.assert_array_equal(batch["gt"][row], source[int(index)]["image"][:8, :8])
    np.testing.assert_array_equal(batch["lq"][row], source[int(index)]["lq"][:4, :4])


def probe_worker(record):
  """Tags a record with what its (spawned) process has imported."""
  import os  # pylint: disable=g-import-not-at-top
  return {**record, "pid": os.getpid(), "tensorflow": "tensorflow" in sys.modules}


def test_spawned_grain_worker_reads_the_source(data_dir):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # As pipeline.allow_absl_flags_outside_app does.
  source = tfds_source.load_tfds_source(RGB, "train", data_dir, lr_key="lr")
  ds = grain.MapDataset.source(source).seed(0).shuffle().map(probe_worker)
  expected = list(ds)
  iterator = iter(ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=1)))
  try:
    records = [next(iterator) for _ in range(len(source))]
  finally:
    iterator.close()
  import os  # pylint: disable=g-import-not-at-top
  assert all(r["pid"] != os.getpid() for r in records)
  assert not any(r["tensorflow"] for r in records), "the worker imported TensorFlow"
  for got, want in zip(records, expected):
    assert got["index"] == want["index"]
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["lq"], want["lq"])


def test_errors_name_the_problem_and_the_fix(data_dirs, data_dir, tmp_path):
  load = tfds_source.load_tfds_source
  with pytest.raises(ValueError, match="must be prepared offline.*tfds build div2k/bicubic_x4 "
                                       "--file_format=array_record.*data.tfds_data_dir"):
    load("div2k/bicubic_x4", "train", "")
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="does not exist.*must be prepared offline"):
    load("div2k/bicubic_x4", "train", missing)
  listed = r"prepared datasets: \['sr_jax_tiny_sr/bicubic_x2:1.0.0', " \
           r"'sr_jax_tiny_sr/gray_x2:1.0.0'\]"
  with pytest.raises(FileNotFoundError, match=f"'div2k/bicubic_x4' not found.*{listed}"):
    load("div2k/bicubic_x4", "train", data_dir)
  with pytest.raises(FileNotFoundError, match=f"no prepared 'sr_jax_tiny_sr/bicubic_x4'.*"
                                              f"{listed}"):
    load(f"{NAME}/bicubic_x4", "train", data_dir)
  with pytest.raises(FileNotFoundError, match=r"version 2.0.0 .* not prepared \(available: "
                                              r"\['1.0.0'\]\)"):
    load(f"{RGB}:2.0.0", "train", data_dir)
  with pytest.raises(FileNotFoundError, match=f"no prepared '{NAME}'.*{listed}"):
    load(NAME, "train", data_dir)  # The config is required.
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no prepared dataset"):
    load(RGB, "train", str(tmp_path / "empty"))
  with pytest.raises(ValueError, match=r"\['tfrecord'\] only \(no array_record files\).*"
                                       r"Rebuild it with file_format=array_record"):
    load(RGB, "train", data_dirs["tfrecord"])
  with pytest.raises(ValueError, match=r"available splits: \['train', 'validation'\]"):
    load(RGB, "test", data_dir)
  with pytest.raises(ValueError, match=r"hr_key='image' is not a feature.*\['hr', 'lr'\]"):
    load(RGB, "train", data_dir, hr_key="image")
  with pytest.raises(ValueError, match=r"lr_key='lq' is not a feature.*\['hr', 'lr'\]"):
    load(RGB, "train", data_dir, lr_key="lq")
  with pytest.raises(ValueError, match="Cannot parse TFDS dataset name"):
    load("div2k/bicubic_x4/extra", "train", data_dir)


def test_reading_imports_neither_jax_nor_tensorflow(data_dir):
  """A fresh process (as a spawned worker is) decodes records with numpy and Pillow only."""
  code = (
      "import sys; import sr_jax.data.tfds_source as t\n"
      "assert 'jax' not in sys.modules, 'jax imported'\n"
      f"s = t.load_tfds_source({RGB!r}, 'train', {data_dir!r}, lr_key='lr'); s[0]\n"
      "assert 'jax' not in sys.modules, 'jax imported by reading'\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow imported by reading'\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_training_and_eval_pipelines_read_tfds(data_dir):
  """data.source='tfds' end to end: stored LR/HR pairs stay aligned; HR alone is degraded."""
  from sr_jax.config import config_base  # pylint: disable=g-import-not-at-top
  from sr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config_base.base_config().data
  config.source, config.tfds_name, config.tfds_data_dir = "tfds", RGB, str(data_dir)
  config.tfds_lr_key, config.crop_size, config.augment = "lr", 8, False
  config.degradation.scale = 2
  batch = next(iter(pipeline.make_train_dataset(config, seed=0, batch_size=5)))
  assert batch["gt"].shape == (5, 8, 8, 3) and batch["lq"].shape == (5, 4, 4, 3)
  np.testing.assert_array_equal(batch["lq"], batch["gt"][:, ::2, ::2])  # lr = hr[::2, ::2].
  examples = pipeline.make_eval_set(config, seed=0)
  assert [e["name"] for e in examples] == [f"{RGB}/validation[{i}]" for i in range(2)]
  for e in examples:
    np.testing.assert_array_equal(e["lq"], e["gt"][::2, ::2])
  config.tfds_lr_key, config.degradation.kind, config.degradation.scale = "", "noise", 1
  batch = next(iter(pipeline.make_train_dataset(config, seed=0, batch_size=5)))
  assert batch["lq"].shape == batch["gt"].shape == (5, 8, 8, 3)
  assert not np.array_equal(batch["lq"], batch["gt"])
