"""Damaged, nested and missing images are found before training; metrics warn on gray vs RGB."""

import struct
import warnings
import zlib

import numpy as np
from PIL import Image
import pytest

from sr_jax.config import config_base
from sr_jax.data import choose_source, integrity, pipeline, sources
from sr_jax.models import registry
from sr_jax.quality import metrics
from sr_jax.train import config_check


def write_image(path, seed=0, size=(40, 48), mode="RGB"):
  rng = np.random.default_rng(seed)
  shape = size + ((3,) if mode == "RGB" else ())
  Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(path)
  return path


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path


def png_with_bad_pixels(path, size=40):
  """A PNG whose chunks and CRCs are valid but whose compressed pixels are garbage: only a
  decode finds it."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64) + chunk(b"IEND", b""))
  return path


@pytest.fixture
def folders(tmp_path):
  for split, count in (("train", 4), ("eval", 2)):
    (tmp_path / split).mkdir()
    for i in range(count):
      write_image(tmp_path / split / f"img{i}.png", seed=i)
  return tmp_path


def folder_config(root, **data):
  c = config_base.base_config()
  c.data.source, c.data.train_dir, c.data.eval_dir = "folder", str(root / "train"), str(
      root / "eval")
  c.data.crop_size, c.data.degradation.kind = 16, "noise"
  c.data.update(data)
  return c


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp"])
def test_cheap_check_finds_truncated_training_images(tmp_path, suffix):
  good = write_image(tmp_path / f"good{suffix}")
  assert integrity.file_problem(good) is None
  bad = truncate(write_image(tmp_path / f"bad{suffix}", seed=1))
  if suffix != ".webp":  # (Pillow's WebP header parse already fails.)
    with Image.open(bad) as image:
      assert image.size == (48, 40)  # The header scan alone passes it.
  assert integrity.file_problem(bad)


def test_a_truncated_training_image_fails_before_training_naming_it(folders):
  bad = truncate(folders / "train" / "img2.png")
  c = folder_config(folders)
  with pytest.raises(ValueError, match=r"1 training image file\(s\) in .* are damaged: "
                                       rf"{bad}: .*data.skip_bad_images=True"):
    config_check.check_images(c)
  with pytest.raises(ValueError, match="img2.png"):  # The source itself refuses it too.
    choose_source.make_source(c.data, "train")


def test_skip_bad_images_drops_each_with_a_warning(folders):
  truncate(folders / "train" / "img2.png")
  c = folder_config(folders, skip_bad_images=True)
  with pytest.warns(UserWarning, match=r"Skipping damaged training image .*img2.png"):
    config_check.check_images(c)
  source = choose_source.make_source(c.data, "train")
  assert source.names == ("img0.png", "img1.png", "img3.png")
  assert pipeline.train_record_count(c.data) == 3
  batch = next(iter(pipeline.make_train_dataset(c.data, seed=0, batch_size=2)))
  assert batch["gt"].shape == (2, 16, 16, 3)


def test_a_damaged_pair_is_dropped_or_named(folders):
  lq = folders / "lq"
  lq.mkdir()
  for i in range(4):
    write_image(lq / f"img{i}.png", seed=10 + i)
  truncate(lq / "img1.png")
  c = folder_config(folders, source="paired", train_lq_dir=str(lq))
  with pytest.raises(ValueError, match=r"lq/img1.png"):
    choose_source.make_source(c.data, "train")
  c.data.skip_bad_images = True
  with pytest.warns(UserWarning, match="lq/img1.png"):
    source = choose_source.make_source(c.data, "train")
  assert source.names == ("img0.png", "img2.png", "img3.png")


def test_eval_images_are_decoded_in_full_before_training(folders):
  bad = png_with_bad_pixels(folders / "eval" / "img1.png")
  assert integrity.file_problem(bad) is None  # Chunks intact: only decoding finds it.
  c = folder_config(folders, skip_bad_images=True)  # Never skips evaluation images.
  with pytest.raises(ValueError, match=rf"1 evaluation image file\(s\) in .* do not decode: "
                                       rf"{bad}"):
    config_check.check_images(c)
  c = folder_config(folders)
  c.data.eval_dir = str(folders / "train")
  c.eval.general_set = str(folders / "eval")  # The general set is checked as well.
  with pytest.raises(ValueError, match="img1.png"):
    config_check.check_images(c)


def test_nested_folders_are_named_or_read_with_recursive(folders):
  (folders / "train" / "more" / "deeper").mkdir(parents=True)
  write_image(folders / "train" / "more" / "deeper" / "img0.png", seed=9)
  (folders / "train" / "empty").mkdir()
  with pytest.warns(UserWarning, match=r"1 sub-folder\(s\) of .* not read: more\. Set "
                                       r"data.recursive=True"):
    files = sources.list_image_files(folders / "train")
  assert len(files) == 4
  source = choose_source.make_source(folder_config(folders, recursive=True).data, "train")
  assert source.names == ("img0.png", "img1.png", "img2.png", "img3.png",
                          "more/deeper/img0.png")


def test_fewer_training_records_than_at_the_checkpoint_warn_with_the_count():
  with pytest.warns(UserWarning, match=r"now holds 797 records, 3 fewer than the 800"):
    integrity.warn_if_fewer(800, 797, "in /data/train")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    integrity.warn_if_fewer(800, 800, "x")
    integrity.warn_if_fewer(800, 900, "x")  # More data is an intended change.
    integrity.warn_if_fewer(None, 3, "x")


def test_metrics_warns_when_gray_is_scored_against_rgb(tmp_path, capsys):
  (tmp_path / "pred").mkdir()
  (tmp_path / "gt").mkdir()
  write_image(tmp_path / "pred" / "a.png", mode="L")
  write_image(tmp_path / "gt" / "a.png")
  write_image(tmp_path / "pred" / "b.png")
  write_image(tmp_path / "gt" / "b.png", mode="L")
  write_image(tmp_path / "pred" / "c.png")
  write_image(tmp_path / "gt" / "c.png")
  with pytest.warns(UserWarning) as record:
    assert metrics.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
  messages = [str(w.message) for w in record if "grayscale" in str(w.message)]
  assert len(messages) == 2
  assert messages[0].startswith("'a': --pred a.png is grayscale but --gt a.png is colour")
  assert messages[1].startswith("'b': --gt b.png is grayscale but --pred b.png is colour")
  assert "3 images" in capsys.readouterr().out


def test_a_mismatched_base_names_the_base_not_the_workdir():
  arch = {"name": "nafnet", "img_channel": 3, "width": 8, "middle_blk_num": 1,
          "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
  with pytest.raises(ValueError) as error:
    registry.check_architecture(arch, dict(arch, width=16), "config.base.checkpoint=/b")
  assert "--workdir" not in str(error.value)
  assert "Use a checkpoint of the configured architecture" in str(error.value)
  with pytest.raises(ValueError, match="Use a new --workdir"):
    registry.check_architecture(arch, dict(arch, width=16), "--workdir /w")
