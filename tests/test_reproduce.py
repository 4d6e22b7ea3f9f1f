"""sr_jax.reproduce: markers, the catalogue against the pages, resuming after a kill, one at a time.

The runner tests use steps that are small Python scripts (no JAX), so they check the runner's
own logic in seconds; test_reproduce_job.py (slow tier) kills and resumes a real training job.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sr_jax import reproduce
from sr_jax.reproduce import markers, render, runner
from sr_jax.reproduce.table import Region, Step, Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(
    os.path.join(ROOT, "docs"))) if f.endswith(".md")]


def test_markers_replace_only_their_region():
  text = "intro\n<!-- reproduce:a -->\nold\n<!-- /reproduce:a -->\nmiddle\n" \
         "<!-- reproduce:b -->\nkeep\n<!-- /reproduce:b -->\n"
  new = markers.replace(text, "a", "| x |\n|---|\n| 1 |")
  assert new == text.replace("old\n", "| x |\n|---|\n| 1 |\n")
  assert markers.region(new, "b") == "keep\n"
  assert markers.names_in(new) == ["a", "b"]
  with pytest.raises(ValueError, match="reproduce:c"):
    markers.replace(text, "c", "x")


def _unmarked_tables(text: str) -> list[str]:
  """Header lines of tables outside every reproduce region and not tagged as not reproduced."""
  inside, found, previous = False, [], ""
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if line.startswith("<!-- reproduce:"):
      inside = True
    elif line.startswith("<!-- /reproduce:"):
      inside = False
    elif line.startswith("|") and not previous.startswith("|") and not inside:
      tag = lines[i - 1] if i else ""
      if not re.match(r"<!-- (reference|not reproduced): .+ -->", tag):
        found.append(line)
    previous = line
  return found


@pytest.mark.parametrize("page", PAGES)
def test_every_table_is_reproduced_or_tagged(page):
  """Each table in README.md and docs/ sits between reproduce markers, or says why not (a
  reference table of facts, or a historical measurement no command reproduces)."""
  assert _unmarked_tables(open(os.path.join(ROOT, page), encoding="utf-8").read()) == []


def test_catalogue_matches_the_pages():
  """Every table of the catalogue has its markers on its pages, and every marker on a page
  belongs to a table of the catalogue."""
  expected = {(r.page, t.marker(r)) for t in reproduce.TABLES for r in t.regions}
  found = {(page, name) for page in PAGES
           for name in markers.names_in(open(os.path.join(ROOT, page), encoding="utf-8").read())}
  assert found == expected
  assert len({t.name for t in reproduce.TABLES}) == len(reproduce.TABLES)


def test_list_names_every_table_with_command_and_time():
  from sr_jax.reproduce import __main__ as cli  # pylint: disable=g-import-not-at-top
  text = cli.listing(ROOT)
  for table in reproduce.TABLES:
    assert f"{table.name}: " in text
    assert table.commands()[0] in text
  assert "NO MARKER" not in text
  assert text.count("wall time alone on 2 CPU cores") == len(reproduce.TABLES)


def test_spread_and_seed_table():
  assert render.spread([21.5, 22.5, 22.0], 2) == "22.00 +- 0.50 (21.50-22.50)"
  assert render.spread([21.5], 2) == "21.50"
  runs = [{"a": {"psnr": 20.0, "trainable": 5}}, {"a": {"psnr": 22.0, "trainable": 5}}]
  table = render.seed_table(runs, [("psnr", "PSNR", lambda v: render.spread(v, 1)),
                                   ("trainable", "n", render.first("{:,}")),
                                   ("ssim", "SSIM", render.first("{}"))])
  assert table.splitlines()[2] == "| a | 21.0 +- 1.4 (20.0-22.0) | 5 | - |"


# --- The runner, on steps that are small scripts. ----------------------------------------------

_STEP = '''
import os, sys, time
out, name = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, name + ".runs"), "a") as f:
  f.write("x")
if os.path.exists(os.path.join(out, "block_" + name)):
  open(os.path.join(out, name + ".started"), "w").write(str(os.getpid()))
  time.sleep(120)
with open(os.path.join(out, name + ".txt"), "w") as f:
  f.write(name.upper())
'''


def _checkout(tmp_path) -> str:
  root = tmp_path / "checkout"
  root.mkdir()
  (root / "page.md").write_text("# Page\n\n<!-- reproduce:toy -->\nold\n<!-- /reproduce:toy -->\n")
  (root / "toy_step.py").write_text(textwrap.dedent(_STEP))
  return str(root)


def _toy_table() -> Table:
  def draw(workdir):
    values = [open(os.path.join(workdir, f"{n}.txt")).read() for n in ("one", "two")]
    return "| step | output |\n|---|---|\n" + "\n".join(
        f"| {i} | {v} |" for i, v in enumerate(values, 1))
  return Table(name="toy", what="test", regions=(Region("page.md", draw),),
               steps=(Step("toy_step", ("{workdir}", "one")),
                      Step("toy_step", ("{workdir}", "two"))))


_DRIVER = '''
import sys
sys.path.insert(0, {tests!r})
import test_reproduce
from sr_jax.reproduce import runner
runner.run(test_reproduce._toy_table(), sys.argv[1], docs_root={root!r},
           concurrent="--concurrent" in sys.argv)
'''


def _start(root: str, workdir: str, lock_dir: str, *extra: str) -> subprocess.Popen:
  script = _DRIVER.format(tests=os.path.dirname(os.path.abspath(__file__)), root=root)
  env = dict(os.environ, SR_JAX_REPRODUCE_LOCK_DIR=lock_dir, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, "-c", script, workdir, *extra], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"the reproduction ended early:\n{proc.stdout.read()}")
    assert time.time() < deadline, f"{path} never appeared"
    time.sleep(0.2)
  time.sleep(0.5)


def _body(root: str) -> str:
  text = markers.region(open(os.path.join(root, "page.md")).read(), "toy")
  return text.split("\n\n*Regenerated by")[0]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:  # A zombie is dead.
    return f.read().split(")")[-1].split()[0] != "Z"


def test_killed_reproduction_resumes_and_gives_the_same_table(tmp_path):
  root, lock = _checkout(tmp_path), str(tmp_path / "lock")
  clean = str(tmp_path / "clean")
  proc = _start(root, clean, lock)
  assert proc.wait(timeout=120) == 0, proc.stdout.read()
  expected = _body(root)
  assert "| 2 | TWO |" in expected

  work = str(tmp_path / "work")
  os.makedirs(work)
  open(os.path.join(work, "block_two"), "w").close()  # Step two hangs until killed.
  proc = _start(root, work, lock)
  _wait_for(os.path.join(work, "two.started"), proc)
  child = int(open(os.path.join(work, "two.started")).read())
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 10
  while _alive(child) and time.time() < deadline:
    time.sleep(0.1)
  assert not _alive(child), "the killed reproduction's command kept running"
  state = runner._State(work)
  assert [s["done"] for s in state.steps.values()] == [True, False]

  os.remove(os.path.join(work, "block_two"))
  proc = _start(root, work, lock)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "done before, skipped" in out
  assert open(os.path.join(work, "one.runs")).read() == "x"  # Not run again.
  assert open(os.path.join(work, "two.runs")).read() == "xx"  # Run again after the kill.
  assert _body(root) == expected
  footer = markers.region(open(os.path.join(root, "page.md")).read(), "toy")
  assert "over 2 sittings" in footer and "cores of" in footer and "jax " in footer


def test_a_second_reproduction_is_refused_naming_the_first(tmp_path):
  root, lock = _checkout(tmp_path), str(tmp_path / "lock")
  first_dir, second_dir = str(tmp_path / "first"), str(tmp_path / "second")
  os.makedirs(first_dir)
  open(os.path.join(first_dir, "block_one"), "w").close()
  first = _start(root, first_dir, lock)
  try:
    _wait_for(os.path.join(first_dir, "one.started"), first)
    second = _start(root, second_dir, lock)
    out, _ = second.communicate(timeout=120)
    assert second.returncode != 0
    assert "another reproduction is running on this machine" in out
    assert f"pid {first.pid}" in out and "--concurrent" in out
    assert not os.path.exists(os.path.join(second_dir, "one.runs"))  # Refused before work.
    concurrent = _start(root, second_dir, lock, "--concurrent")
    out, _ = concurrent.communicate(timeout=120)
    assert concurrent.returncode == 0, out
  finally:
    first.kill()
    first.wait()


def test_missing_data_and_markers_are_named_before_any_work(tmp_path):
  root = _checkout(tmp_path)
  needs = Table(name="toy", what="t", regions=(Region("page.md", str),),
                steps=(Step("toy_step", ("{workdir}", "one")),), datasets=("CBSD68",),
                needs="CBSD68 photographs")
  with pytest.raises(runner.ReproduceError, match="--datasets DIR with DIR/CBSD68"):
    runner.run(needs, str(tmp_path / "w"), docs_root=root, concurrent=True)
  unmarked = Table(name="other", what="t", regions=(Region("page.md", str),), steps=())
  with pytest.raises(runner.ReproduceError, match="reproduce:other"):
    runner.run(unmarked, str(tmp_path / "w"), docs_root=root, concurrent=True)
  assert not os.path.exists(str(tmp_path / "w"))


def test_a_failing_command_is_named_and_the_page_untouched(tmp_path):
  root = _checkout(tmp_path)
  broken = Table(name="toy", what="t", regions=(Region("page.md", str),),
                 steps=(Step("toy_step_missing", ()),))
  with pytest.raises(runner.ReproduceError, match="toy_step_missing.*exited with status"):
    runner.run(broken, str(tmp_path / "w"), docs_root=root, concurrent=True, say=lambda _: None)
  assert "old" in open(os.path.join(root, "page.md")).read()


def test_jobs_write_their_rows_beside_the_table(tmp_path):
  """report.write_table's results.json holds the numbers of results.md (what render reads)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from sr_jax.train import report  # pylint: disable=g-import-not-at-top
  rows = {"degraded input": {"psnr": 13.25, "ssim": 0.5, "per_image": [{"psnr": 13.25}]},
          "lora": {"psnr": 21.5, "ssim": 0.75, "trainable": 10, "trainable_pct": 7.0,
                   "step_ms": 70.4}}
  report.write_table(str(tmp_path), rows, metric_writers.MultiWriter([]), echo=False)
  read = render.results(str(tmp_path))
  assert read == {arm: {k: v for k, v in r.items() if k != "per_image"}
                  for arm, r in rows.items()}
  assert "| lora | 21.500 | 0.7500 |" in (tmp_path / "results.md").read_text()
  with pytest.raises(FileNotFoundError, match="has not finished"):
    render.results(str(tmp_path / "missing"))


def test_a_rendered_table_names_no_local_folder_and_its_footer_the_datasets_flag():
  text = runner.anonymous("Command: `python -m sr_jax.study --workdir /tmp/x/run/study "
                          "--config.data.train_dir=/data/sets/Manga`", "/tmp/x/run/",
                          "/data/sets")
  assert text == ("Command: `python -m sr_jax.study --workdir W/study "
                  "--config.data.train_dir=DATASETS/Manga`")
  needs_data = Table("t", "what", (), (), datasets=("Manga",))
  assert "--workdir W --datasets DIR`" in runner.footer(needs_data, 60.0, 1)
  assert "--workdir W` on" in runner.footer(Table("t", "what", (), ()), 60.0, 1)


def test_the_speed_table_reads_each_reports_ratio_and_layout_lines(tmp_path):
  """The LoRA / full summary comes from the tools' own lines (benchmark and perf_report),
  not from numbers typed into the catalogue."""
  from sr_jax.reproduce import catalog_speed  # pylint: disable=g-import-not-at-top
  bench = ("| layer | kind |\n|---|---|\n| a/kernel | Conv |\n\n"
           "Layouts: 47 merged, 0 unmerged, 142 factored of 189; predicted 9 ms per step saved "
           "against all merged.\n\nLoRA r=8 / full fine-tuning: time 0.91, FLOPs 0.80, temp "
           "memory 1.00, total memory (temp + args) 0.89.\n")
  for name in ("nafnet.md", "nafnet_tiny.md", "rrdbnet.md", "nafnet_h100.md",
               "rrdbnet_h100.md"):
    (tmp_path / name).write_text(bench)
  (tmp_path / "perf_report.md").write_text(
      "- Restormer default, float32: LoRA r=8 / full: time 0.83, memory 0.99, FLOPs 0.85; "
      "trainable 4.14% of 26,126,644.\n")
  text = catalog_speed._speed(str(tmp_path))  # pylint: disable=protected-access
  assert ("| NAFNet-w32, r=8 | 0.91 | 0.80 | 0.89 | 47 merged, 0 unmerged, 142 factored of 189 |"
          in text)
  assert "| Restormer default, LoRA r=8 | 0.83 | 0.85 | 0.99 | - |" in text
  assert "| a/kernel |" not in text  # The per-layer table stays in the tool's report.
  assert "Predicted for an H100 (247 TMAC/s, 3.35 TB/s), RRDBNet x4: 47 merged" in text
