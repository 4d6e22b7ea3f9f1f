"""The workdir layout: the paths every job, tool and test reads are the ones written here."""

from sr_jax.util import layout


def test_a_workdir_spells_its_files_and_nested_runs():
  w = layout.Workdir("/runs/w")
  assert w.export_params == "/runs/w/export/params"
  assert w.export_adapters == "/runs/w/export/adapters"
  assert w.base.export_params == "/runs/w/base/export/params"
  assert w.sub("colora").export_adapters == "/runs/w/colora/export/adapters"
  assert (w.checkpoints, w.corrupt_checkpoints) == ("/runs/w/checkpoints",
                                                    "/runs/w/checkpoints_corrupt")
  assert w.allocation("uniform") == "/runs/w/faig/allocation_uniform.json"
  assert (w.results, w.timing, w.lock) == ("/runs/w/results.md", "/runs/w/timing.json",
                                           "/runs/w/.sr_jax.lock")


def test_an_object_store_url_stays_a_url():
  w = layout.Workdir("gs://bucket/run/")
  assert w.lock == "gs://bucket/run/.sr_jax.lock"
  assert w.probe.export_params == "gs://bucket/run/probe/export/params"
