"""Exports are swapped in whole: a killed re-export keeps the previous one loadable."""

import os

from etils import epath
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sr_jax.util import exports


def params(value):
  return {"conv": {"kernel": np.full((3, 3, 4, 8), value, np.float32),
                   "bias": np.arange(8, dtype=np.float32) * value}}


def kernel_of(directory):
  return float(exports.load_params(str(directory))[0]["conv"]["kernel"][0, 0, 0, 0])


class Killed(BaseException):
  """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


def test_identical_content_is_not_rewritten(tmp_path):
  export = tmp_path / "export" / "params"
  exports.save_params(str(export), params(1.0), {"step": 5})
  before = os.stat(export / "params").st_ino, os.stat(export / "meta.json").st_mtime_ns
  exports.save_params(str(export), params(1.0), {"step": 5})
  assert (os.stat(export / "params").st_ino, os.stat(export / "meta.json").st_mtime_ns) == before
  exports.save_params(str(export), params(1.0), {"step": 6})  # Same tensors, new meta.
  assert os.stat(export / "params").st_ino == before[0]
  assert exports.read_params_meta(str(export))["step"] == 6
  assert sorted(os.listdir(tmp_path / "export")) == ["params"]


def test_a_kill_while_writing_keeps_the_old_export(tmp_path, monkeypatch):
  export = tmp_path / "params"
  exports.save_params(str(export), params(1.0), {"step": 5})
  real_save = ocp.Checkpointer.save

  def save_then_die(self, path, *args, **kwargs):
    real_save(self, path, *args, **kwargs)  # Part of the export is on disk...
    raise Killed()  # ...and then the process dies.
  monkeypatch.setattr(ocp.Checkpointer, "save", save_then_die)
  with pytest.raises(Killed):
    exports.save_params(str(export), params(2.0), {"step": 9})
  monkeypatch.undo()
  assert kernel_of(export) == 1.0 and exports.read_params_meta(str(export))["step"] == 5
  exports.save_params(str(export), params(2.0), {"step": 9})  # The re-run completes it.
  assert kernel_of(export) == 2.0
  assert sorted(os.listdir(tmp_path)) == ["params"]  # No staging or .old left behind.


def test_a_kill_between_the_renames_is_read_and_repaired(tmp_path, monkeypatch):
  export = tmp_path / "params"
  exports.save_params(str(export), params(1.0), {"step": 5})
  path_type = type(epath.Path(str(tmp_path)))
  real_rename = path_type.rename

  def rename_then_die(self, target):
    if str(self).endswith(".new"):  # The old export is already at params.old.
      raise Killed()
    return real_rename(self, target)
  monkeypatch.setattr(path_type, "rename", rename_then_die)
  with pytest.raises(Killed):
    exports.save_params(str(export), params(2.0), {"step": 9})
  monkeypatch.undo()
  assert not export.exists() and kernel_of(export) == 1.0  # Read from params.old.
  exports.save_params(str(export), params(2.0), {"step": 9})
  assert kernel_of(export) == 2.0 and sorted(os.listdir(tmp_path)) == ["params"]


def test_digest_depends_on_every_tensor_and_its_path():
  base = exports.tree_digest(params(1.0))
  assert exports.tree_digest(params(1.0)) == base
  changed = params(1.0)
  changed["conv"]["bias"][3] = np.nextafter(np.float32(3), np.float32(4))  # One ulp.
  assert exports.tree_digest(changed) != base
  renamed = {"conv2": params(1.0)["conv"]}
  assert exports.tree_digest(renamed) != base


def test_a_directory_with_foreign_files_is_refused_and_an_old_orbax_leftover_is_not(tmp_path):
  export = tmp_path / "params"
  (export / "params.orbax-checkpoint-tmp-1712").mkdir(parents=True)  # A killed old export.
  exports.save_params(str(export), params(1.0), {"step": 5})
  assert kernel_of(export) == 1.0
  (export / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"holds files sr_jax did not write \(notes.txt\)"):
    exports.save_params(str(export), params(2.0), {"step": 6})
  assert (export / "notes.txt").read_text() == "mine" and kernel_of(export) == 1.0


def test_the_size_of_an_export_on_disk_depends_only_on_its_contents(tmp_path):
  """The export MiB a results table reports: the same tree gives the same bytes on disk (with
  OCDBT the same 100 KB tree took 235-346 KB from one save to the next)."""
  rng = np.random.default_rng(0)
  tree = {f"layer{i}": {"a": rng.normal(size=(32 * (1 + i % 3), 4)).astype(np.float32),
                        "b": rng.normal(size=(4, 32)).astype(np.float32)} for i in range(30)}
  sizes = []
  for i in range(3):
    exports.save_params(str(tmp_path / f"e{i}"), tree, {"step": 100 + i})
    sizes.append(exports.directory_size(str(tmp_path / f"e{i}")))
  assert sizes[0] == sizes[1] == sizes[2]
  raw = sum(a.nbytes for layer in tree.values() for a in layer.values())
  assert raw < sizes[0] < 2 * raw + 64 * 1024  # The tensors plus per-leaf metadata.
  loaded, _ = exports.load_params(str(tmp_path / "e0"))
  np.testing.assert_array_equal(loaded["layer7"]["a"], tree["layer7"]["a"])
