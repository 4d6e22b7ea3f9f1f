"""Errors a person reads in one glance: what the project raises on purpose is printed as its
message alone; anything else is a bug and keeps its traceback, with a line saying so.

"On purpose" is decided by where the exception comes from, not by a list of classes to keep in
step with the code: an error of the kinds sr_jax raises for bad input (ValueError and its
ConfigError, FileNotFoundError, RuntimeError such as a held workdir, FloatingPointError for a
diverged run) whose innermost frame is in sr_jax's own code or a job config is a message the
project wrote for the user, naming the thing and the fix. The same kinds raised inside JAX,
NumPy or another library, and every other kind (TypeError, AssertionError, ...), are bugs.

Exit status: 2 for a usage or config error (an exception whose class sets `exit_code = 2`:
the config checks, the tools' UsageErrors), 1 for a failure during work. `--traceback` (or
SR_JAX_TRACEBACK=1) shows the stack of an expected error too, for a bug report.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXPECTED_KINDS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                  RuntimeError, FloatingPointError)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # sr_jax/
_CONFIGS = os.path.join(os.path.dirname(_PACKAGE), "configs")
BUG_LINE = ("This is a bug in sr_jax, not a problem with your input: please report it with the "
            "traceback above and the command you ran (and W/log.txt for a training run).")


flags.DEFINE_bool("traceback", False, "Show the stack of an expected error too, for a bug "
                  "report (or set SR_JAX_TRACEBACK=1).")


class UsageError(ValueError):
  """A problem with the command line or the user's files, found before any work: exit 2."""
  exit_code = EXIT_USAGE


def show_traceback() -> bool:
  """--traceback on the command line, or SR_JAX_TRACEBACK=1 in the environment."""
  return os.environ.get("SR_JAX_TRACEBACK", "") not in ("", "0") or "--traceback" in sys.argv


def _origin(error: BaseException) -> str:
  """The file of the innermost frame that raised `error`."""
  tb = error.__traceback__
  if tb is None:
    return ""
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename)


def is_expected(error: BaseException) -> bool:
  """Whether sr_jax raised `error` on purpose for the user (see the module docstring)."""
  if getattr(error, "exit_code", None) is not None:
    return True
  if not isinstance(error, EXPECTED_KINDS):
    return False
  origin = _origin(error)
  return origin.startswith(_PACKAGE + os.sep) or origin.startswith(_CONFIGS + os.sep)


def exit_code(error: BaseException) -> int:
  return int(getattr(error, "exit_code", EXIT_FAILURE))


def message(error: BaseException) -> str:
  """The error's text (a KeyError's without repr quotes)."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return str(text).strip() or type(error).__name__


def report(error: BaseException, stream=None) -> int:
  """Prints `error` the way the module docstring says; returns the exit status."""
  stream = sys.stderr if stream is None else stream
  if is_expected(error) and not show_traceback():
    stream.write(f"error: {message(error)}\n")
    return exit_code(error)
  traceback.print_exception(type(error), error, error.__traceback__, file=stream)
  if not is_expected(error):
    stream.write(BUG_LINE + "\n")
  return exit_code(error) if is_expected(error) else EXIT_FAILURE


def guarded(main: Callable[..., Any]) -> Callable[..., Any]:
  """`main` (an absl `main(argv)` or any entry function) with errors reported as above and
  Ctrl-C as one line saying how to resume."""
  @functools.wraps(main)
  def run(*args: Any, **kwargs: Any) -> Any:
    try:
      return main(*args, **kwargs)
    except KeyboardInterrupt:
      sys.stderr.write("\ninterrupted: re-run the same command to resume from the last "
                       "checkpoint.\n")
      sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # pylint: disable=broad-except
      if isinstance(error, app.UsageError):
        raise  # absl prints its own usage message.
      sys.exit(report(error))
  return run
