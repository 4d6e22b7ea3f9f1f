"""The command line of the tools that take a job config: overrides as users type them, short
errors, and the key listing.

`parse_flags(argv)` is the `flags_parser` these tools give `absl.app.run`. Before absl parses
anything it checks every `--config.a.b=value` override against the config's keys, so a
mistyped key is one short message (the key, the closest valid key, the valid keys of that
section; exit status 2) rather than ml_collections' chained traceback; any other flag error
is one line too. Tuple keys take comma-separated values as a user types them
(`--config.colora.arms=uniform,colora`), as well as Python syntax (`"('uniform','colora')"`).
"""

from __future__ import annotations

import ast
import difflib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

from sr_jax.config import config_doc, config_files

ConfigDict = ml_collections.ConfigDict
EXIT_USAGE = 2


def _item(text: str) -> Any:
  """One comma-separated item: a number or other Python literal when it reads as one, else
  the text itself (a name, a path, a regex)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_tuple(text: str) -> tuple[Any, ...]:
  """'uniform,colora' -> ('uniform', 'colora'); '1000,2000' -> (1000, 2000); "('a', 'b')"
  (Python syntax) -> ('a', 'b'); 'a' -> ('a',); '' or '()' -> (). An item holding a comma
  (a regex like 'a{1,2}') needs the Python syntax."""
  text = text.strip()
  if not text:
    return ()
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return tuple(_item(part.strip()) for part in text.split(",") if part.strip())
  if isinstance(value, (tuple, list)):
    return tuple(value)
  return (value,)


class TupleParser(tuple_parser.TupleParser):
  """ml_collections' tuple parser with `parse_tuple`'s reading of strings."""

  def parse(self, argument):
    if isinstance(argument, str):
      return parse_tuple(argument)
    return super().parse(argument)


config_flags.register_flag_parser_for_type(tuple, TupleParser())


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of --name=VALUE or --name VALUE in argv (the last one given), else None."""
  value = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf"--?{name}(=(.*))?", arg)
    if match:
      value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def overrides(argv: Sequence[str], name: str = "config") -> list[str]:
  """The dotted keys overridden in argv: 'a.b' for --config.a.b=1, --config.a.b 1, --noconfig.a.b."""
  keys = []
  for arg in argv:
    match = re.match(rf"--?(?:no)?{name}\.([^=]+)", arg)
    if match:
      keys.append(match.group(1))
  return keys


def unknown_key_message(config: ConfigDict, key: str, name: str = "config") -> str | None:
  """None when `key` ('a.b.c') names a key of `config`; else the short error for it."""
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts):
    if isinstance(node, ConfigDict) and part in node:
      node = node[part]
      continue
    section = ".".join(parts[:depth])
    if not isinstance(node, ConfigDict):
      return (f"--{name}.{key}: '{section}' is a value, not a section; set it with "
              f"--{name}.{section}=VALUE.")
    valid = sorted(node.keys())
    close = difflib.get_close_matches(part, valid, n=1, cutoff=0.6)
    if close:
      guess = ".".join(parts[:depth] + close + parts[depth + 1:])
    else:  # Perhaps the right key in another section (--config.rank -> lora.rank).
      paths = [k for k, _ in config_doc.leaves(config)]
      last = difflib.get_close_matches(parts[-1], sorted({p.rsplit(".", 1)[-1] for p in paths}),
                                       n=1, cutoff=0.8)
      guess = next((p for p in paths if last and p.rsplit(".", 1)[-1] == last[0]), None)
    where = f"section '{section}'" if section else "the config"
    hint = f" Did you mean '{guess}'?" if guess else ""
    return (f"Unknown config key '{key}': {where} has no key '{part}'.{hint}\n"
            f"Valid keys of {where}: {', '.join(valid)}.\n"
            f"(--show_config lists every key with its value and meaning.)")
  return None


def fail(message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  sys.exit(EXIT_USAGE)


def check_overrides(argv: Sequence[str], name: str = "config") -> None:
  """Exits with the short error when an override in argv names no key of the config."""
  keys = overrides(argv, name)
  spec = _flag_value(argv, name)
  if not keys or not spec:
    return
  try:
    config = config_files.load(spec)
  except Exception:  # pylint: disable=broad-except
    return  # absl reports a config that does not load, naming the file.
  for key in keys:
    message = unknown_key_message(config, key, name)
    if message:
      fail(message)


def resolve_config_names(argv: Sequence[str], name: str = "config") -> list[str]:
  """argv with a job name given to --config ('colora_nafnet:demo') replaced by the shipped
  config file's path, as ml_collections loads files by path."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f"--{name}="):
      out[i] = f"--{name}=" + config_files.resolve(arg.split("=", 1)[1])
    elif arg == f"--{name}" and i + 1 < len(out):
      out[i + 1] = config_files.resolve(out[i + 1])
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser: job names resolved, the override check, then absl's parsing with
  one-line errors."""
  argv = resolve_config_names(argv)
  check_overrides(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).replace("\n", " "))
  return []  # Unreachable: fail exits.


def show(config: ConfigDict, spec: str, sections: Mapping[str, Callable[[], Any]] | None = None
         ) -> None:
  """Prints `config_doc.listing` of the config (with the command line's overrides applied);
  `sections`: the objectives' own sections (sr_jax.objectives.sections())."""
  print(config_doc.listing(config, spec, sections))


def define_show_config() -> None:
  """--show_config, for every command that takes --config (defined once per process)."""
  if "show_config" not in flags.FLAGS:
    flags.DEFINE_bool("show_config", False, "List every key of --config with its value and "
                      "meaning (overrides applied), then exit.")


def shown(name: str = "config", sections: Mapping[str, Callable[[], Any]] | None = None
          ) -> bool:
  """With --show_config: prints the config's listing and returns True (the caller exits)."""
  if not flags.FLAGS["show_config"].value:
    return False
  show(flags.FLAGS[name].value, flags.FLAGS[name].config_filename, sections)
  return True
