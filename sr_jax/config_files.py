"""Job config files loaded by path, as `--config configs/<job>.py[:variants]` loads them.

Tools that build on a job's recipe (e.g. sr_jax.tools.perf_report) load the file itself rather
than importing the repository's top-level `configs` package, which is not part of the
installed `sr_jax` package. A bare job name ('lora_nafnet', 'sr3:demo') is looked up in the
`configs/` folder beside the sr_jax package (a source checkout).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import ml_collections

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def config_path(name_or_path: str) -> pathlib.Path:
  """The file of a job config: a path to a .py file, or a job name in the repository's configs/."""
  path = pathlib.Path(name_or_path).expanduser()
  if path.suffix != ".py":
    path = REPOSITORY / "configs" / f"{name_or_path}.py"
  if not path.is_file():
    raise FileNotFoundError(f"No job config file {path}: pass a path to a config .py file, or the "
                            f"name of one in {REPOSITORY / 'configs'} (a source checkout).")
  return path


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of 'path/or/name[:variants]', e.g. 'configs/sr3.py:demo' or 'sr3_finetune:lora'."""
  name, _, variants = spec.partition(":")
  path = config_path(name)
  # A job file may import its siblings (`from configs import prod_nafnet`): make their folder's
  # parent importable, as running from the repository root does.
  root = str(path.parent.parent)
  if root not in sys.path:
    sys.path.append(root)
  module_spec = importlib.util.spec_from_file_location(f"_sr_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variants or None)
