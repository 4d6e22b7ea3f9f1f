"""What every config key means, read from the comments in config_base.py, and listings.

config_base.py documents each key with a comment on its line or on the lines just above it. So
that the documentation has one home, `meanings()` reads those comments from the file itself
(with `ast` for the structure and `tokenize` for the comments) rather than keeping a second
table: {'model.name': ..., 'data.degradation.kind': ..., 'gan.d_optimizer.b1': ...}. Sections
built by a helper function (`optimizer_config()`, `degradation_config()`) get that function's
keys wherever they are used, and its docstring's first line as the section's meaning.

`listing(config)` is `python -m sr_jax.main --config C --show_config`: every key with its value
and meaning; `summary(config)` is the few lines a run prints instead of the whole config.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import pathlib
import tokenize
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

_SOURCE = pathlib.Path(__file__).with_name("config_base.py")


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
  """({line: comment text}, lines holding nothing but a comment)."""
  text, alone = {}, set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      row, col = tok.start
      text[row] = tok.string.lstrip("#").strip()
      if not tok.line[:col].strip():
        alone.add(row)
  return text, alone


class _Reader:
  """Meanings of the keys config_base.py defines (see the module docstring)."""

  def __init__(self, source: str, helpers: str = ""):
    """`helpers`: another module's source whose section functions `source` calls (an
    objective's section calls config_base's optimizer_config)."""
    self.tree = ast.parse(source)
    self.comments, self.alone = _comments(source)
    self.functions = {f.name: f for f in self.tree.body if isinstance(f, ast.FunctionDef)}
    self.helpers = _Reader(helpers) if helpers else None
    self.out: dict[str, str] = {}

  def meaning(self, node: ast.AST, section: bool = False) -> str:
    """A trailing comment on the node's lines (a section's: its first line), else the comment
    block right above it."""
    for row in range(node.lineno, (node.lineno if section else node.end_lineno) + 1):
      if row in self.comments and row not in self.alone:
        return self.comments[row]
    rows, row = [], node.lineno - 1
    while row in self.alone:
      rows.insert(0, self.comments[row])
      row -= 1
    return " ".join(rows)

  def function_dict(self, name: str) -> ast.Call | None:
    """The `dict(key=value, ...)` call a section function returns."""
    for node in ast.walk(self.functions[name]):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id == "dict" and any(k.arg for k in node.keywords)):
        return node
    return None

  def section_of(self, value: ast.AST) -> tuple[ast.Call | None, str]:
    """(the dict call holding a section's keys, the section's own meaning) of an expression."""
    if isinstance(value, ast.Call) and isinstance(value.func, (ast.Name, ast.Attribute)):
      # optimizer_config(...) here, config_base.optimizer_config(...) in an objective's section.
      name = value.func.id if isinstance(value.func, ast.Name) else value.func.attr
      if name in self.functions:
        doc = ast.get_docstring(self.functions[name]) or ""
        return self.function_dict(name), " ".join(doc.split("\n\n")[0].split())
    for node in ast.walk(value):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return node, ""
    return None, ""

  def read_dict(self, prefix: str, call: ast.Call) -> None:
    for keyword in call.keywords:
      if keyword.arg is None:
        continue
      key = prefix + keyword.arg
      inner, doc = self.section_of(keyword.value)
      helper = self.helpers
      if inner is None and helper is not None and isinstance(keyword.value, ast.Call):
        inner, doc = helper.section_of(keyword.value)
        if inner is not None:  # The helper's keys, with the helper's own comments.
          self.out[key] = self.meaning(keyword, section=True) or doc
          helper.out = {}
          helper.read_dict(key + ".", inner)
          self.out.update(helper.out)
          continue
      if inner is not None and isinstance(keyword.value, ast.Call):
        self.out[key] = self.meaning(keyword, section=True) or doc
        self.read_dict(key + ".", inner)
      else:
        self.out[key] = self.meaning(keyword)

  def read_section(self, section: str, function: str) -> dict[str, str]:
    """The keys of `function`'s returned dict, as config.<section>.*, and the section's own
    meaning (the function's docstring's first paragraph)."""
    doc = ast.get_docstring(self.functions[function]) or ""
    self.out[section] = " ".join(doc.split("\n\n")[0].split())
    self.read_dict(section + ".", self.function_dict(function))
    return self.out

  def read_base(self) -> dict[str, str]:
    for node in ast.walk(self.functions["base_config"]):
      if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
        continue
      key = node.targets[0].attr
      inner, doc = self.section_of(node.value) if isinstance(node.value, ast.Call) else (None, "")
      self.out[key] = self.meaning(node, section=inner is not None) or doc
      if inner is not None:
        self.read_dict(key + ".", inner)
    return self.out


@functools.cache
def _base_meanings() -> dict[str, str]:
  return _Reader(_SOURCE.read_text()).read_base()


def section_meanings(section: str, defaults: Callable[[], Any]) -> dict[str, str]:
  """{dotted key: meaning} of an objective's section, read from its defaults function's
  comments (ObjectiveSpec.section_defaults; see the module docstring)."""
  source = inspect.getsource(inspect.getmodule(defaults))
  return _Reader(source, helpers=_SOURCE.read_text()).read_section(section, defaults.__name__)


def meanings(sections: Mapping[str, Callable[[], Any]] | None = None) -> dict[str, str]:
  """{dotted key: its one-line meaning} for every key of config_base.base_config() and of the
  given objective sections ({section: defaults function}, sr_jax.objectives.sections())."""
  out = dict(_base_meanings())
  for section, defaults in (sections or {}).items():
    out.update(section_meanings(section, defaults))
  return out


def leaves(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted key, value) of every leaf: a section's own values first, then its sections."""
  sections = (dict, ml_collections.ConfigDict)
  out = [(prefix + k, v) for k, v in config.items() if not isinstance(v, sections)]
  for key, value in config.items():
    if isinstance(value, sections):
      out += leaves(value, f"{prefix}{key}.")
  return out


def _format_value(value: Any) -> str:
  """A value as it is typed after --config.KEY= (tuples as comma-separated items)."""
  if isinstance(value, tuple):
    return ",".join(_format_value(v) for v in value) if value else "()"
  if isinstance(value, str):
    return value if value else "''"
  return repr(value)


def listing(config: ml_collections.ConfigDict, name: str = "",
            sections: Mapping[str, Callable[[], Any]] | None = None) -> str:
  """Every key: `key = value` as typed on the command line, a mark where the job changed the
  default, and the key's meaning; sections are headed by their own meaning. `sections`: the
  objectives' own sections ({section: defaults function}) the config may hold."""
  from sr_jax.config import config_base  # pylint: disable=g-import-not-at-top
  defaults = dict(leaves(config_base.base_config()))
  for section, make in (sections or {}).items():
    defaults.update(leaves(make(), section + "."))
  docs = meanings(sections)
  pairs = leaves(config)
  lines = [f"{name or 'config'}: {len(pairs)} keys. Override one with --config.KEY=VALUE "
           "(tuples as a,b,c); '*' marks values this job changes from the defaults."]
  width = min(48, max(len(f"{k} = {_format_value(v)}") for k, v in pairs))
  section = None
  for key, value in pairs:
    parent = key.rpartition(".")[0]
    if parent != section:
      section = parent
      lines += ["", f"[{parent or 'top level'}] {docs.get(parent, '')}".rstrip()]
    changed = "*" if key in defaults and defaults[key] != value else " "
    text = f"{key} = {_format_value(value)}"
    lines.append(f"{changed} {text:<{width}}  # {docs.get(key) or '(no description)'}")
  return "\n".join(lines)


def summary(config: ml_collections.ConfigDict) -> str:
  """The few lines a run prints about its config (the whole config goes to the workdir)."""
  c = config
  data = c.data.source + (f" ({c.data.embedded_set})" if c.data.source == "embedded" else "")
  deg = c.data.degradation
  task = deg.kind if deg.kind not in ("chain", "prod", "fixed", "single") else (
      f"{deg.kind} of {','.join(deg.ops)}")
  lines = [f"job {c.job or '?'}: {c.objective} objective, {c.model.name} '{c.model.preset}', "
           f"{c.num_steps} steps of batch {c.batch_size} on {c.data.crop_size}px crops of "
           f"{data}, degradation {task}, {c.optimizer.name} lr {c.optimizer.learning_rate:g} "
           f"({c.optimizer.schedule})"]
  if c.base.checkpoint:
    lines.append(f"base: {c.base.checkpoint}")
  elif c.base.num_steps:
    lines.append(f"base: pre-trained here for {c.base.num_steps} steps "
                 f"(degradation {c.base.degradation.kind})")
  if c.colora.enabled:
    lines.append(f"CoLoRA: arms {','.join(c.colora.arms)}; probe {c.colora.probe_steps} steps; "
                 f"FAIG M={c.colora.faig_steps} on {c.colora.faig_images} crops; budget "
                 f"{c.colora.budget:.0%} of the base's parameters")
  elif c.lora.enabled:
    lines.append(f"LoRA: rank {c.lora.rank}" + (f", plan {c.lora.plan_file}"
                                                if c.lora.plan_file else ""))
  return "\n".join(lines)
