"""The documentation: the site builds without a warning, and every Python block runs as written.

Each page (the README and every page under ``docs/``) runs in a fresh interpreter, from an empty
temporary directory outside the checkout, its ```python blocks in order in one namespace — as a
user pasting them one after the other would: a block may use what the blocks above it on the same
page defined, and nothing else. The pages run concurrently; a failure names the page and the
line where the failing block starts, and the traceback points into the page itself.
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
TIMEOUT_S = 300

# Runs the blocks of the page named in argv[1]: each is compiled with the page as its file name,
# shifted to its line there, so tracebacks quote the page; a marker line before each block tells
# the test which one failed.
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


def start_page(page: Path, workdir: Path) -> subprocess.Popen:
    """Runs the page's blocks in a fresh interpreter in ``workdir``; only this checkout's
    ``jaxlstm`` is importable besides the installed packages."""
    package_dir = workdir / "_path"
    package_dir.mkdir()
    (package_dir / "jaxlstm").symlink_to(ROOT / "jaxlstm", target_is_directory=True)
    run = workdir / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": str(package_dir), "MPLBACKEND": "Agg"}
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(page)], cwd=run, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    process.stdin.write(json.dumps(python_blocks(page)))
    process.stdin.close()
    return process


def finish_page(page: Path, process: subprocess.Popen) -> None:
    """Waits for the page's run; fails naming the page and the block that raised."""
    try:
        output = process.stdout.read()
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{page.name}: the Python blocks did not finish within {TIMEOUT_S} s")
    if process.returncode != 0:
        started = re.findall(r"^@@block (\d+)$", output, flags=re.M)
        where = f"the block at line {started[-1]}" if started else "before the first block"
        name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        pytest.fail(f"{name}: {where} failed:\n{output[-6000:]}", pytrace=False)


RUNNABLE = [page for page in PAGES if python_blocks(page)]


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    """Starts every selected page at once (independent interpreters), for the tests to await."""
    selected = [item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_python_blocks_run"]
    runs = {page: start_page(page, tmp_path_factory.mktemp(page.stem)) for page in selected}
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()


def test_the_guides_are_among_the_pages_run():
    names = {str(page.relative_to(ROOT)) for page in RUNNABLE}
    guides = {"README.md", "docs/index.md", "docs/porting.md", "docs/training.md",
              "docs/variable-length.md", "docs/parity.md"}
    assert guides <= names, guides - names


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, page_runs):
    finish_page(page, page_runs[page])


def test_runner_reports_the_failing_block_and_isolates_pages(tmp_path):
    first = tmp_path / "first.md"
    first.write_text("# A\n\n```python\nvalue = 41\n```\n\nText.\n\n```python\n"
                     "print(value + 1)\nundefined_name\n```\n")
    second = tmp_path / "second.md"
    second.write_text("```python\nprint(value)\n```\n")
    assert python_blocks(first) == [(3, "value = 41\n"), (9, "print(value + 1)\nundefined_name\n")]
    for page, line, error in ((first, 9, "undefined_name"), (second, 1, "value")):
        workdir = tmp_path / page.stem
        workdir.mkdir()
        with pytest.raises(pytest.fail.Exception) as failure:
            finish_page(page, start_page(page, workdir))
        message = str(failure.value)
        assert message.startswith(f"{page}: the block at line {line} failed"), message
        assert f"NameError: name '{error}' is not defined" in message
        # The traceback quotes the page at the failing line.
        assert f'File "{page}", line {line + 2 if page is first else line + 1}' in message


def test_blocks_run_outside_the_checkout(tmp_path):
    page = tmp_path / "where.md"
    page.write_text("```python\nimport os, jaxlstm\nprint(os.getcwd())\n"
                    "print(jaxlstm.__file__)\nopen('scratch.txt', 'w').close()\n```\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    process = start_page(page, workdir)
    output = process.stdout.read()
    assert process.wait(timeout=TIMEOUT_S) == 0, output
    cwd, package = output.splitlines()[1:3]
    assert not Path(cwd).resolve().is_relative_to(ROOT)
    assert Path(package).resolve() == ROOT / "jaxlstm" / "__init__.py"
    assert (workdir / "run" / "scratch.txt").exists()


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
