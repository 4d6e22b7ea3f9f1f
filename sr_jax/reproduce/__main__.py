"""`python -m sr_jax.reproduce --list` | `python -m sr_jax.reproduce NAME --workdir W`.

--list names every published table with its page, commands, data and wall time. With a name,
runs that table's commands in W (resuming: re-run the same command after a kill or in a later
sitting), then rewrites the table between its markers. One reproduction runs on a machine at a
time; a second is refused naming the first, unless --concurrent.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before anything imports TensorFlow.

from absl import app, flags  # noqa: E402

from sr_jax import reproduce  # noqa: E402
from sr_jax.util import errors
from sr_jax.reproduce import markers, runner  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("list", False, "List every published table and how to regenerate it.")
flags.DEFINE_string("workdir", None, "Directory for the runs of the reproduction (re-running "
                    "with the same one resumes).")
flags.DEFINE_string("datasets", "", "Folder holding the data sets a table needs (e.g. "
                    "CSun_Hays80, CBSD68, CManga109_60); --list says which.")
flags.DEFINE_string("docs_root", None, "Checkout whose README.md and docs/ are rewritten "
                    "(default: the one this sr_jax was imported from).")
flags.DEFINE_bool("concurrent", False, "Run even when another reproduction is running on this "
                  "machine (both then measure each other's load).")


def default_docs_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(reproduce.__file__))))


def listing(docs_root: str) -> str:
  """What --list prints: one block per table."""
  blocks = []
  for table in reproduce.TABLES:
    pages = []
    for region in table.regions:
      path = os.path.join(docs_root, region.page)
      found = (os.path.isfile(path) and
               table.marker(region) in markers.names_in(open(path, encoding="utf-8").read()))
      pages.append(f"{region.page} ({'marker ' + table.marker(region) if found else 'NO MARKER'})")
    lines = [f"{table.name}: {table.what}", f"  page: {', '.join(pages)}",
             f"  needs: {table.needs}" + (f" (--datasets DIR holding {', '.join(table.datasets)})"
                                          if table.datasets else ""),
             f"  wall time alone on 2 CPU cores: {table.wall_time}", "  runs:"]
    lines += [f"    {c}" for c in table.commands()]
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def main(argv: list[str]) -> None:
  docs_root = FLAGS.docs_root or default_docs_root()
  if FLAGS.list:
    print(listing(docs_root))
    return
  if len(argv) != 2:
    raise app.UsageError("name one table (python -m sr_jax.reproduce --list names them), e.g. "
                         "python -m sr_jax.reproduce demo --workdir /tmp/repro_demo")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required: the directory for the reproduction's runs "
                         "(re-running with the same one resumes).")
  runner.run(reproduce.find(argv[1]), FLAGS.workdir, docs_root=docs_root,
             datasets=FLAGS.datasets, concurrent=FLAGS.concurrent)


def command() -> None:
  """The `sr-jax-reproduce` console command (the same as python -m sr_jax.reproduce)."""
  app.run(errors.guarded(main))


if __name__ == "__main__":
  command()
