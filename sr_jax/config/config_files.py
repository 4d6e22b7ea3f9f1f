"""Job config files loaded by path, as `--config configs/<job>.py[:variants]` loads them.

Tools that build on a job's recipe (e.g. sr_jax.tools.perf_report) load the file itself rather
than importing the top-level `configs` package of a checkout. A bare job name ('lora_nafnet',
'sr3:demo') is looked up among the configs shipped in the package (`sr_jax/configs`), so
`--config colora_nafnet:demo` works from any directory with an installed sr_jax.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

import ml_collections

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent  # sr_jax/
REPOSITORY = _PACKAGE.parent
# The job configs ship inside the package as sr_jax/configs (in a checkout, a link to the
# top-level configs/), so an installed sr_jax finds them by name from any directory.
PACKAGED = _PACKAGE / "configs"


def job_names() -> list[str]:
  """The job configs shipped with sr_jax ('colora_nafnet', 'sr3', ...)."""
  return sorted(p.stem for p in PACKAGED.glob("*.py") if not p.stem.startswith("_"))


def config_path(name_or_path: str) -> pathlib.Path:
  """The file of a job config: a path to a .py file, or the name of a shipped job config."""
  path = pathlib.Path(name_or_path).expanduser()
  if path.suffix != ".py":
    path = PACKAGED / f"{name_or_path}.py"
  if not path.is_file():
    raise FileNotFoundError(f"No job config file {path}: pass a path to a config .py file, or "
                            f"one of the shipped job names: {', '.join(job_names())}.")
  return path


def resolve(spec: str) -> str:
  """'NAME[:variants]' -> 'PATH[:variants]' when NAME is not a file but a shipped job's name
  (e.g. 'colora_nafnet:demo'); any other spec is returned as given."""
  name, sep, variants = spec.partition(":")
  if pathlib.Path(name).expanduser().exists() or name.endswith(".py") or not name:
    return spec
  if not (PACKAGED / f"{name}.py").is_file():
    return spec
  alias_configs_package()
  return str(PACKAGED / f"{name}.py") + (sep + variants if sep else "")


def alias_configs_package() -> None:
  """Makes `import configs` (how job configs import their siblings: `from configs import
  prod_nafnet`) find the shipped sr_jax.configs when no checkout's configs/ is importable."""
  try:
    importlib.import_module("configs")
  except ImportError:
    sys.modules["configs"] = importlib.import_module("sr_jax.configs")


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of 'path/or/name[:variants]', e.g. 'configs/sr3.py:demo' or 'sr3_finetune:lora'."""
  name, _, variants = spec.partition(":")
  path = config_path(name)
  # A job file may import its siblings (`from configs import prod_nafnet`): make their folder's
  # parent importable, as running from the repository root does (or, for the shipped configs,
  # alias their package).
  if path.resolve().parent == PACKAGED.resolve():
    alias_configs_package()
  else:
    root = str(path.parent.parent)
    if root not in sys.path:
      sys.path.append(root)
  module_spec = importlib.util.spec_from_file_location(f"_sr_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variants or None)
