"""Every `python -m sr_jax...` command in README.md and docs/*.md parses: the module exists,
each of its --flags is one the tool defines, each --config loads and each --config.a.b=v names
a real key and takes the value. Nothing is run; commands that read the user's own files
(checkpoints, image folders) are listed as such, and checked the same way."""

import ast
import glob
import importlib.util
import os
import re
import shlex

import ml_collections
import pytest

from sr_jax.config import config_cli, config_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Arguments that only a user can supply: their checkpoints, images and datasets.
USER_FILES = re.compile(r"(^|/)(data|bases|results|gt|hazy|lr|noisy)/|\.(pth|pt|safetensors)$|"
                        r"^(W|bases|gs://)")


def doc_files() -> list[str]:
  """README.md and the pages under docs/."""
  return [os.path.join(REPO, "README.md"),
          *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def readme_commands() -> list[str]:
  """The `python -m sr_jax.*` commands of the README and docs/*.md, continuation lines joined."""
  commands = []
  for path in doc_files():
    text = open(path, encoding="utf-8").read()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
      joined = re.sub(r"\\\n\s*", " ", block)
      commands += [line.strip() for line in joined.splitlines()
                   if line.strip().startswith("python -m sr_jax")]
  return commands


def module_file(module: str) -> str:
  spec = importlib.util.find_spec(module)
  assert spec is not None, f"No module {module}"
  if spec.submodule_search_locations:  # A package run with -m: its __main__.
    return os.path.join(spec.submodule_search_locations[0], "__main__.py")
  return spec.origin


def defined_flags(path: str) -> set[str]:
  """Flag names a tool defines: absl DEFINE_*("name") and argparse add_argument("--name")."""
  source = open(path, encoding="utf-8").read()
  if "define_show_config()" in source:  # sr_jax.config.config_cli's shared --show_config.
    source += '\nflags.DEFINE_bool("show_config", False, "")\n'
  if "distributed.define_flags()" in source:
    source += open(os.path.join(REPO, "sr_jax", "util", "distributed.py"), encoding="utf-8").read()
  names = set()
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
      continue
    strings = [a.value for a in node.args if isinstance(a, ast.Constant)
               and isinstance(a.value, str)]
    if node.func.attr.startswith("DEFINE_") and strings:
      names.add(strings[0])
    elif node.func.attr == "add_argument" and strings and strings[0].startswith("--"):
      names.add(strings[0][2:])  # The spelling documented (older aliases are not).
  return names | {"help", "helpfull", "helpshort"}


def _typed(default, text: str):
  """The value of --config.key=text as the command line reads it, for the key's type."""
  if isinstance(default, tuple):
    return config_cli.parse_tuple(text)
  if isinstance(default, bool):
    return text.lower() in ("true", "1")
  if isinstance(default, str):
    return text
  return type(default)(ast.literal_eval(text))


def check_command(command: str) -> None:
  words = shlex.split(command, comments=True)
  module = words[2]
  flags = defined_flags(module_file(module))
  config = None
  for i, word in enumerate(words[3:], start=3):
    if not word.startswith("--"):
      continue
    name, _, value = word[2:].partition("=")
    if name.startswith("config.") or name.startswith("noconfig."):
      continue
    assert name in flags or (name.startswith("no") and name[2:] in flags), (
        f"{module} defines no --{name}: {command}")
    if name == "config":
      spec = value or words[i + 1]
      config = config_files.load(spec)
  if config is None:  # A tool with a default config (sr_jax.tools.benchmark).
    source = open(module_file(module), encoding="utf-8").read()
    default = (re.search(r'DEFINE_config_file\(\s*"config",\s*"([^"]+)"', source) or
               re.search(r'DEFINE_config_file\(\s*"config",\s*str\(config_files\.config_path\('
                         r'"([^"]+)"\)\)', source))
    config = config_files.load(default.group(1)) if default else None
  for word in words:
    if word.startswith("--config."):
      assert config is not None, f"--config.* without --config: {command}"
      key, _, value = word[len("--config."):].partition("=")
      assert config_cli.unknown_key_message(config, key) is None, (
          config_cli.unknown_key_message(config, key))
      node, *parts = [config] + key.split(".")
      for part in parts[:-1]:
        node = node[part]
      node[parts[-1]] = _typed(node[parts[-1]], value)  # The locked config checks the type.


COMMANDS = readme_commands()


def test_the_readme_has_commands_and_marks_those_needing_user_files():
  assert len(COMMANDS) >= 25
  needing = [c for c in COMMANDS if any(USER_FILES.search(w) for w in shlex.split(c, True))]
  self_contained = [c for c in COMMANDS if c not in needing]
  # The first-hour commands run on the embedded photos, with nothing to download.
  assert any("colora_nafnet.py:demo" in c for c in self_contained)
  assert any("sr_jax.infer" in c for c in needing)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
  check_command(command)


def test_the_checker_catches_mistakes():
  with pytest.raises(AssertionError, match="Unknown config key 'lora.rnak'"):
    check_command("python -m sr_jax.main --config configs/lora_nafnet.py:demo --workdir W "
                  "--config.lora.rnak=3")
  with pytest.raises(AssertionError, match="defines no --crop-border"):
    check_command("python -m sr_jax.quality.metrics --pred a --gt b --crop-border 4")
  with pytest.raises((TypeError, ValueError)):
    check_command("python -m sr_jax.main --config configs/lora_nafnet.py --workdir W "
                  "--config.num_steps=many")
  with pytest.raises(ValueError, match="valid variants"):
    check_command("python -m sr_jax.main --config configs/lora_nafnet.py:dmeo --workdir W")
  assert isinstance(config_files.load("configs/lora_nafnet.py"), ml_collections.ConfigDict)
