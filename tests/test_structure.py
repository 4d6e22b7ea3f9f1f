"""The package's shape: no import circle, short modules, configs that name their objective, no
tool importing the repository's configs package, and text that stands alone."""

import ast
import pathlib
import re

import pytest

from sr_jax import objectives
from sr_jax.config import config_files

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sr_jax"
MAX_LINES = 450


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """sr_jax modules `path` imports anywhere (top level or inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import mod` imports the module; `from mod import name`, the module.
      names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
               else node.module for alias in node.names]
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        found.add(name)
  found.discard(_module_name(path))
  return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph`, or None."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 2
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_cycle_finder_finds_cycles():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_the_package():
  modules = _modules()
  graph = {name: _imports(path, modules) for name, path in modules.items()}
  # Parent packages import nothing of their children here, so the graph is the whole story.
  assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


# The package's floors, bottom up: a module imports its own package or a lower floor, never
# one beside or above it (the picture in docs/design.md). A new top-level package or module
# must be placed here.
FLOORS = {
    "util": 0,  # paths, console, errors, sharding, trees, exports: no sr_jax concept
    "config": 1, "ROOT": 1,  # job configs and their command line; sr_jax/__init__.py
    "models": 2, "data": 2,
    "quality": 3, "adapt": 3,  # metrics and evaluation; LoRA, adapters, CoLoRA, FAIG
    "diffusion": 4, "inference": 4,  # diffusion processes; restoring images (tiles, TLC)
    "objectives": 5,  # an objective's config section, rules, state, update and restorer
    "train": 6, "convert": 6,  # one run over a workdir; official checkpoints in
    "jobs": 7, "infer": 7,  # stages over a workdir; the inference command
    "study": 8, "main": 8, "forgetting": 8, "reproduce": 8,
    "tools": 9,
}


def _floor_of(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "ROOT"


def test_every_top_level_package_has_a_floor():
  missing = {_floor_of(name) for name in _modules()} - set(FLOORS)
  assert not missing, f"place {sorted(missing)} in FLOORS"


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """'a -> b' for each import of a package on the importer's floor or above it."""
  upward = []
  for name, imported in sorted(graph.items()):
    own = _floor_of(name)
    for other in sorted(imported):
      if _floor_of(other) != own and FLOORS[_floor_of(other)] >= FLOORS[own]:
        upward.append(f"{name} -> {other}")
  return upward


def test_the_floor_check_finds_upward_and_sideways_imports():
  assert _upward_imports({"sr_jax.util.trees": {"sr_jax.adapt.lora"},
                          "sr_jax.quality.lpips": {"sr_jax.adapt.lora"},
                          "sr_jax.train.loop": {"sr_jax.train.guards", "sr_jax.util.paths"}}) == [
      "sr_jax.quality.lpips -> sr_jax.adapt.lora", "sr_jax.util.trees -> sr_jax.adapt.lora"]


def test_no_module_imports_a_package_beside_or_above_its_own():
  modules = _modules()
  graph = {name: _imports(path, modules) for name, path in modules.items()}
  assert not _upward_imports(graph), _upward_imports(graph)


def test_no_module_is_over_450_lines():
  long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, long


def test_no_package_module_imports_the_configs_package():
  for path in PACKAGE.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        assert node.module.split(".")[0] != "configs", path
      if isinstance(node, ast.Import):
        assert all(a.name.split(".")[0] != "configs" for a in node.names), path


def _config_variants(path: pathlib.Path) -> list[str]:
  """'' plus each variant named in the file's parse_variants(..., allowed=(...))."""
  match = re.search(r"allowed=\(([^)]*)\)", path.read_text())
  variants = re.findall(r"\"(\w+)\"", match.group(1)) if match else []
  return [""] + variants


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("[!_]*.py")), ids=lambda p: p.stem)
def test_every_config_and_variant_names_a_registered_objective(path):
  for variant in _config_variants(path):
    config = config_files.load(f"{path}:{variant}" if variant else str(path))
    assert config.objective in objectives.names(), (path.name, variant, config.objective)


def test_an_unset_or_unknown_objective_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"config.objective is not set.*'diffusion', 'gan', "
                                       r"'pixel'"):
    objectives.get("")
  with pytest.raises(ValueError, match=r"Unknown config.objective 'gann'.*'gan'"):
    objectives.get("gann")


_OUTSIDE = re.compile(r"REFERENCE\.md|DESIGN\.md|[Ss]eeds? ?0{2}[0-3]|seed-0{2}[0-3]")


def test_the_project_text_points_to_nothing_outside_the_repository():
  """Code, configs, launchers, docs and README cite papers and repositories by name, never the
  team's notes or internal labels."""
  files = [*PACKAGE.rglob("*.py"), *(REPO / "configs").glob("*.py"), *(REPO / "launch").glob("*"),
           *(REPO / "docs").glob("*.md"), *(REPO / "tests").glob("*.py"), REPO / "README.md"]
  hits = [f"{p.relative_to(REPO)}:{i}" for p in files if p.is_file()
          for i, line in enumerate(p.read_text().splitlines(), 1) if _OUTSIDE.search(line)]
  assert not hits, hits[:20]
