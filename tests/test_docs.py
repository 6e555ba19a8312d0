"""The documentation: the site builds without a warning, and every Python block runs as written.

Every ```python block of a page (the README and every page under ``docs/``) runs alone, in a
fresh interpreter, from an empty temporary directory outside the checkout — as a user pasting
that one block would run it: it must import what it uses. A block whose first line is the
comment ``# continues the block above`` continues the block before it on the same page (which
may itself continue another): it runs after those blocks, in their interpreter and namespace.
The runs are separate test items, so pytest-xdist runs them side by side; a failure names the
page and the line where the failing block starts, and the traceback points into the page.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\S*)[^\n]*$")
CONTINUES = "# continues the block above"
TIMEOUT_S = 300

# Runs the blocks given on stdin: each is compiled with the page as its file name, shifted to
# its line there, so tracebacks quote the page; a marker line before each block tells the test
# which one failed.
RUNNER = textwrap.dedent(
    """
    import json, sys
    page = sys.argv[1]
    namespace = {"__name__": "__main__"}
    for line, source in json.load(sys.stdin):
        print(f"@@block {line}", flush=True)
        exec(compile("\\n" * line + source, page, "exec"), namespace)
    """
)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(line of the opening fence, source)`` of each ```python block, in order.

    Lines are 1-based, so a block's first source line is line + 1 of the page.
    """
    blocks, current, start, language = [], None, 0, None
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        stripped = line.strip()
        match = FENCE.match(stripped)
        if current is None and match:
            language, current, start = match.group(1), [], number
            indent = len(line) - len(line.lstrip())
        elif current is not None and stripped == "```":
            if language == "python":
                blocks.append((start, textwrap.dedent("\n".join(current)) + "\n"))
            current = None
        elif current is not None:
            current.append(line[indent:] if line[:indent].isspace() else line)
    assert current is None, f"{page}: the block opened at line {start} is never closed"
    return blocks


def block_runs(page: Path) -> list[list[tuple[int, str]]]:
    """The page's blocks as they run: each in a list of its own, except that a block whose
    first line is :data:`CONTINUES` joins the list of the block above it."""
    runs: list[list[tuple[int, str]]] = []
    for line, source in python_blocks(page):
        if source.lstrip().startswith(CONTINUES):
            assert runs, f"{page}: the block at line {line} continues no block above it"
            runs[-1].append((line, source))
        else:
            runs.append([(line, source)])
    return runs


def run_blocks(page: Path, blocks: list[tuple[int, str]], workdir: Path) -> str:
    """Runs ``blocks`` of ``page`` in order in a fresh interpreter in ``workdir``, where only
    this checkout's ``jaxlstm`` is importable besides the installed packages; returns the
    output, or fails naming the page and the block that raised."""
    package_dir = workdir / "_path"
    package_dir.mkdir()
    (package_dir / "jaxlstm").symlink_to(ROOT / "jaxlstm", target_is_directory=True)
    run = workdir / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": str(package_dir), "MPLBACKEND": "Agg"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, str(page)], cwd=run, env=env, text=True,
            input=json.dumps(blocks), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{page.name}: the Python blocks did not finish within {TIMEOUT_S} s")
    if done.returncode != 0:
        started = re.findall(r"^@@block (\d+)$", done.stdout, flags=re.M)
        where = f"the block at line {started[-1]}" if started else "before the first block"
        name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        pytest.fail(f"{name}: {where} failed:\n{done.stdout[-6000:]}", pytrace=False)
    return done.stdout


RUNS = [(page, blocks) for page in PAGES for blocks in block_runs(page)]


def test_the_guides_are_among_the_pages_run():
    names = {str(page.relative_to(ROOT)) for page, _ in RUNS}
    guides = {"README.md", "docs/index.md", "docs/porting.md", "docs/training.md",
              "docs/variable-length.md", "docs/parity.md", "docs/distributed.md"}
    assert guides <= names, guides - names


@pytest.mark.parametrize("page, blocks", RUNS,
                         ids=[f"{page.relative_to(ROOT)}:{blocks[0][0]}" for page, blocks in RUNS])
def test_python_blocks_run(page, blocks, tmp_path):
    run_blocks(page, blocks, tmp_path)


def test_each_block_runs_alone_unless_it_continues_the_block_above(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n```python\nvalue = 41\n```\n\nText.\n\n```python\n"
                    f"{CONTINUES}\nprint(value + 1)\nundefined_name\n```\n\n"
                    "```python\nprint(value)\n```\n")
    assert python_blocks(page) == [
        (3, "value = 41\n"), (9, f"{CONTINUES}\nprint(value + 1)\nundefined_name\n"),
        (15, "print(value)\n"),
    ]
    runs = block_runs(page)
    assert [[line for line, _ in blocks] for blocks in runs] == [[3, 9], [15]]
    for blocks, line, error in ((runs[0], 9, "undefined_name"), (runs[1], 15, "value")):
        workdir = tmp_path / str(line)
        workdir.mkdir()
        with pytest.raises(pytest.fail.Exception) as failure:
            run_blocks(page, blocks, workdir)
        message = str(failure.value)
        assert message.startswith(f"{page}: the block at line {line} failed"), message
        # The continued block ran first (41 + 1); a block alone never sees another's names.
        assert ("42" in message) == (line == 9)
        assert f"NameError: name '{error}' is not defined" in message
        # The traceback quotes the page at the failing line.
        assert f'File "{page}", line {line + 3 if line == 9 else line + 1}' in message


def test_a_continuation_needs_a_block_above(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"```python\n{CONTINUES}\nx = 1\n```\n")
    with pytest.raises(AssertionError, match="continues no block above it"):
        block_runs(page)


def test_blocks_run_outside_the_checkout(tmp_path):
    page = tmp_path / "where.md"
    page.write_text("```python\nimport os, jaxlstm\nprint(os.getcwd())\n"
                    "print(jaxlstm.__file__)\nopen('scratch.txt', 'w').close()\n```\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    output = run_blocks(page, python_blocks(page), workdir)
    cwd, package = output.splitlines()[1:3]
    assert not Path(cwd).resolve().is_relative_to(ROOT)
    assert Path(package).resolve() == ROOT / "jaxlstm" / "__init__.py"
    assert (workdir / "run" / "scratch.txt").exists()


def test_ci_runs_the_readme_test_command():
    """.ci/run installs and tests with the README's command (the linter between the two)."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^pip install -c constraints.txt -e \"\.\[test\]\" && .*$", readme,
                        flags=re.M).group(0)
    assert command == 'pip install -c constraints.txt -e ".[test]" && python -m pytest -q'
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith(("#", "set ", "cd ", "export "))]
    install, test = command.split(" && ")
    assert lines == [install, "ruff check .", test]


def test_site_builds_without_warnings(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert not re.search(r"^WARNING\b", done.stderr, flags=re.M), done.stderr
    # The charts come from benchmarks/ and the API pages are not empty.
    assert (tmp_path / "img" / "results.png").stat().st_size > 0
    api = (tmp_path / "api" / "nnx" / "index.html").read_text()
    assert 'id="jaxlstm.nnx.LSTM"' in api and "seq_lengths" in api
