"""The regions of a markdown page that a reproduction owns, between two HTML comments.

A published table sits between `<!-- reproduce:NAME -->` and `<!-- /reproduce:NAME -->`
(invisible when the page is rendered). `python -m sr_jax.reproduce NAME` replaces what lies
between them, and nothing else on the page, so the prose around a table stays the author's
while the numbers are always the program's.
"""

from __future__ import annotations

import re


def begin(name: str) -> str:
  return f"<!-- reproduce:{name} -->"


def end(name: str) -> str:
  return f"<!-- /reproduce:{name} -->"


def _pattern(name: str) -> re.Pattern[str]:
  """NAME's region: markers alone on their lines (a marker quoted in prose is not one)."""
  return re.compile("^" + re.escape(begin(name)) + r"\n(.*?)^" + re.escape(end(name)) + "$",
                    re.DOTALL | re.MULTILINE)


def names_in(text: str) -> list[str]:
  """The reproduction names whose begin marker stands on a line of `text`, in page order."""
  return re.findall(r"^<!-- reproduce:([\w.-]+) -->$", text, re.MULTILINE)


def region(text: str, name: str) -> str:
  """What lies between NAME's markers in `text`; a ValueError if they are missing or repeated."""
  found = _pattern(name).findall(text)
  if len(found) != 1:
    raise ValueError(f"expected one pair of markers {begin(name)} ... {end(name)}, found "
                     f"{len(found)}: add them around the table the reproduction writes.")
  return found[0]


def replace(text: str, name: str, body: str) -> str:
  """`text` with NAME's region replaced by `body` (the markers themselves stay)."""
  region(text, name)  # Exactly one pair, or a clear error.
  body = body.rstrip("\n") + "\n"
  return _pattern(name).sub(lambda _: f"{begin(name)}\n{body}{end(name)}", text, count=1)
