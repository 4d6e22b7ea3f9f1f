r"""An adapter bank's mixed batch against the same batch through one merged adapter.

  python -m sr_jax.tools.bank_benchmark --checkpoint W/base/export/params \
      --adapter haze=W1/colora/export/adapters --adapter rain=W2/colora/export/adapters \
      --counts 1,2,4,8 --batches 1,2,4,8 --output bank.md

For each bank size N (the given adapters repeated to fill it) a batch whose rows cycle through
all N adapters runs through `AdapterBank.apply`; the baseline is the same batch through one
adapter merged into the base (`model.apply` on `adapters.apply_adapter`), what serving one
task costs. Both are jitted and warmed; they take turns --repeats times in this one process
and each time is the median of its turns.
Memory is XLA's analysis of each compiled program (temporaries + arguments). Every mixed row
is also checked against its own adapter merged and run alone (the largest difference).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import app, flags

from sr_jax.adapt import adapter_bank, adapters
from sr_jax.inference import bank_infer
from sr_jax.util import errors, paths, runtime

FLAGS = flags.FLAGS


def compiled_program(fn: Callable, *args) -> tuple[Callable, float]:
  """(fn jitted, compiled for args and warmed once, its compiled memory MiB: temporaries +
  arguments)."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  mem = compiled.memory_analysis()
  mib = (mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**20 if mem else float("nan")
  return compiled, mib


def interleaved_ms(calls: list[tuple[Callable, tuple]], repeats: int) -> list[float]:
  """Median ms of each (compiled, args) call, the calls taking turns `repeats` times, so that
  whatever else loads the machine meanwhile weighs on each alike."""
  times: list[list[float]] = [[] for _ in calls]
  for _ in range(repeats):
    for spent, (fn, args) in zip(times, calls):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      spent.append(1000 * (time.perf_counter() - start))
  return [statistics.median(t) for t in times]


def measure(bank: adapter_bank.AdapterBank, named, count: int, batch: int, size: int,
            repeats: int = 15) -> dict:
  """One row: the mixed batch through a bank of `count` adapters (the given ones repeated to
  fill it) against the same batch through one merged adapter."""
  cycled = []
  for i in range(count):
    name, adapter = named[i % len(named)]
    cycled.append((name if i < len(named) else f"{name}#{i}", adapter))
  sized = adapter_bank.build(bank.model, bank.base, cycled)
  images = jax.random.uniform(jax.random.PRNGKey(0), (batch, size, size, 3))
  index = jnp.arange(batch, dtype=jnp.int32) % count
  bank_args = (sized.arrays(), images, index)
  bank_fn, bank_mib = compiled_program(sized.apply, *bank_args)
  one_args = (adapters.apply_adapter(bank.base, named[0][1]), images)
  one_fn, one_mib = compiled_program(lambda p, x: bank.model.apply({"params": p}, x), *one_args)
  bank_ms, one_ms = interleaved_ms([(bank_fn, bank_args), (one_fn, one_args)], repeats)
  mixed = sized.apply(sized.arrays(), images, index)
  worst = 0.0
  for row in range(batch):
    alone = bank.model.apply({"params": adapters.apply_adapter(bank.base, cycled[row % count][1])},
                             images[row:row + 1])[0]
    worst = max(worst, float(jnp.max(jnp.abs(mixed[row] - alone))))
  return dict(count=count, batch=batch, bank_ms=bank_ms, one_ms=one_ms, bank_mib=bank_mib,
              one_mib=one_mib, worst=worst)


def table(rows: list[dict]) -> str:
  lines = ["| adapters in the bank | batch | mixed batch ms | one merged adapter ms | ratio | "
           "ms per image (mixed) | memory MiB (mixed / merged) | largest difference |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['count']} | {r['batch']} | {r['bank_ms']:.1f} | {r['one_ms']:.1f} | "
                 f"{r['bank_ms'] / r['one_ms']:.2f} | {r['bank_ms'] / r['batch']:.1f} | "
                 f"{r['bank_mib']:.0f} / {r['one_mib']:.0f} | {r['worst']:.1e} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  runtime.setup()
  dirs = bank_infer.named_adapters(FLAGS.adapter)
  model, base, named = adapter_bank.load_parts(FLAGS.checkpoint, dirs)
  bank = adapter_bank.build(model, base, named)
  counts, batches = [int(c) for c in FLAGS.counts], [int(b) for b in FLAGS.batches]
  largest = max(batches)
  rows = [measure(bank, named, c, largest, FLAGS.size, FLAGS.repeats) for c in counts]
  rows += [measure(bank, named, max(counts), b, FLAGS.size, FLAGS.repeats)
           for b in batches if b != largest]
  ranks = sorted({r for _, a in named for _, r in a.plan.ranks})
  text = (f"Adapter bank on {jax.devices()[0].device_kind} ({jax.device_count()} device(s)): "
          f"{bank.model.__class__.__name__} base, adapters {', '.join(dirs)} (ranks "
          f"{ranks[0]}-{ranks[-1]}, padded to {bank.rank}), {FLAGS.size}x{FLAGS.size} images; "
          f"the mixed batch's rows cycle through every adapter of the bank.\n\n" + table(rows))
  print(text, flush=True)
  if FLAGS.output:
    paths.write_text(FLAGS.output, text + "\n")


def _define_flags() -> None:
  """Flags, defined only when run as a program (tests import this module beside others)."""
  flags.DEFINE_string("checkpoint", None, "The base (a run's export/params).")
  flags.DEFINE_multi_string("adapter", None, "NAME=DIR of an adapter trained on the base.")
  flags.DEFINE_list("counts", ["1", "2", "4", "8"], "Adapters in the bank.")
  flags.DEFINE_list("batches", ["1", "2", "4", "8"], "Batch sizes (at the largest count).")
  flags.DEFINE_integer("size", 128, "Image side.")
  flags.DEFINE_integer("repeats", 15, "Timed calls of each program per row (median).")
  flags.DEFINE_string("output", "", "Also write the markdown report to this file.")
  flags.mark_flags_as_required(["checkpoint", "adapter"])


if __name__ == "__main__":
  _define_flags()
  app.run(errors.guarded(main))
