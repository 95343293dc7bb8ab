"""Docs that run: every ```sh/```bash/```console and ```python block of README.md and
docs/*.md is executed as written, one test per block (id FILE:LINE), and the
doctests of the public modules' docstrings are run.

Each block runs in a fresh temporary directory (also $HOME) with a fresh
$HUTONG_STATE (~/.hutong), the environment's bin directory first on PATH, under
`bash -e -o pipefail` or a fresh Python interpreter, with a timeout. An HTML
comment directly above a block (one per line) tells the runner about it:

    <!-- doctest: name=NAME -->         other blocks of the same file may use it as set-up
    <!-- doctest: setup=A,B -->         run these first, in the same directory (a Python
                                        block after Python set-up: in the same namespace):
                                        blocks named A, B in the same file, or the
                                        runner's fixtures below
    <!-- doctest: skip=REASON -->       not run in CI; REASON says why

Fixtures: `venv` links ./.venv to the environment under test; `dataset` makes a
small tree ./dataset; `store` runs `hutong init`; `federation` starts a registry and
sites w1 and w2 of entity bank-a (states ./w1, ./w2) holding /bank-a/loans, and
defines `registry_url` (Python) or $REGISTRY_URL (shell).
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "console"}
RUN = SHELL | {"python"}
TIMEOUT = 300
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
MARK = re.compile(r"^<!--\s*doctest:\s*(\w+)\s*=\s*(.*?)\s*-->\s*$")

#: Modules whose docstrings hold doctests, and their set-up: fixtures (below) and named
#: Python blocks (FILE#NAME), in order.
DOCTEST_MODULES: dict[str, tuple[str, ...]] = {
    "gfs.federation.ids": (),
    "dataflow": ("docs/dataflow.md#three-sites",),
    "dataflow.ops": ("docs/dataflow.md#three-sites",),
}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file and its doctest markers."""

    file: Path
    line: int
    """1-based line of the first line of code."""
    lang: str
    code: str
    marks: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    def mark(self, key: str) -> str | None:
        return next((v for k, v in self.marks if k == key), None)

    @property
    def setup(self) -> list[str]:
        return [s.strip() for s in (self.mark("setup") or "").split(",") if s.strip()]


def parse(path: Path) -> list[Block]:
    """The fenced blocks of `path`, with the `doctest:` comments directly above each."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        marks: list[tuple[str, str]] = []
        k = start - 1
        while k >= 0 and (mk := MARK.match(lines[k].strip())):
            bad = mk.group(1) not in ("name", "setup", "skip")
            assert not bad, f"{path}:{k + 1}: unknown doctest marker {mk.group(1)!r}"
            marks.insert(0, (mk.group(1), mk.group(2)))
            k -= 1
        out.append(Block(path, start + 2, lang, "\n".join(lines[start + 1:j]) + "\n",
                         tuple(marks)))
        i = j + 1
    return out


def shell_script(b: Block) -> str:
    """The commands of a shell block (`console`: the lines after a `$ ` prompt)."""
    if b.lang != "console":
        return b.code
    return "".join(line[2:] + "\n" for line in b.code.splitlines() if line.startswith("$ "))


ALL = [b for p in DOCS for b in parse(p)]
RUNNABLE = [b for b in ALL if b.lang in RUN]


def named(b: Block, name: str) -> Block | None:
    return next((x for x in ALL if x.file == b.file and x.mark("name") == name), None)


# -- fixtures the runner provides --------------------------------------------------------------


def _venv(d: Path, env: dict[str, str], py: list[str]) -> Iterator[None]:
    (d / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    yield


def _dataset(d: Path, env: dict[str, str], py: list[str]) -> Iterator[None]:
    (d / "dataset" / "sub").mkdir(parents=True)
    (d / "dataset" / "a.csv").write_text("".join(f"{i},{i * i},row {i}\n" for i in range(20000)))
    (d / "dataset" / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    yield


def _store(d: Path, env: dict[str, str], py: list[str]) -> Iterator[None]:
    _check(subprocess.run(["hutong", "init", "-q"], cwd=d, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT), "hutong init")
    yield


def _federation(d: Path, env: dict[str, str], py: list[str]) -> Iterator[None]:
    from gfs.federation.testing import Federation

    with Federation(d, ttl=3.0, heartbeat=0.3) as fed:
        fed.registry()
        fed.site("w1", "bank-a", "cn-west", primary=True)
        fed.site("w2", "bank-a", "cn-west")
        with fed.client("bank-a") as fc:
            fc.mkdir("/bank-a/loans", parents=True)
            for i in range(3):
                fc.write_bytes(f"/bank-a/loans/part-{i}.csv",
                               "".join(f"{j},{j % 7}\n" for j in range(5000 * (i + 1))).encode())
        env["REGISTRY_URL"] = fed.registry_url
        py.append(f"registry_url = {fed.registry_url!r}\n")
        yield


FIXTURES: dict[str, Callable[[Path, dict[str, str], list[str]], Iterator[None]]] = {
    "venv": _venv, "dataset": _dataset, "store": _store, "federation": _federation}


def _check(r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode == 0, (f"{what} exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}"
                               f"\n--- stderr\n{r.stderr[-6000:]}")


def environment(d: Path) -> dict[str, str]:
    """A fresh HOME and HUTONG_STATE in `d` (so no profile but the example's own), this
    environment's bin first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HUTONG_", "VIRTUAL_ENV", "XDG_CONFIG_HOME"))}
    bindir = str(Path(sys.executable).parent)
    env.update(HOME=str(d), HUTONG_STATE=str(d / ".hutong"), PYTHONPATH=str(ROOT),
               PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PYTHONDONTWRITEBYTECODE="1")
    return env


def python_chunk(b: Block) -> str:
    """Driver code that runs block `b` so a traceback names its file and line."""
    src = "\n" * (b.line - 1) + b.code
    return f"exec(compile({src!r}, {str(b.file.relative_to(ROOT))!r}, 'exec'), globals())\n"


@contextmanager
def prepared(b: Block, d: Path, env: dict[str, str]) -> Iterator[list[str]]:
    """Run `b`'s set-up (fixtures started, named shell blocks run); yields the Python
    prelude (fixture definitions and named Python blocks) for a Python block."""
    py: list[str] = []
    with ExitStack() as stack:
        for name in b.setup:
            dep = named(b, name)
            if dep is not None:
                if dep.lang in SHELL:
                    run_shell(dep, d, env)
                elif b.lang == "python":
                    py.append(python_chunk(dep))     # same interpreter and namespace
                else:
                    run_python(py, dep, d, env)
                continue
            assert name in FIXTURES, (f"{b.id}: setup {name!r} is neither a block named so in "
                                      f"{b.file.name} nor a fixture ({', '.join(FIXTURES)})")
            stack.enter_context(contextmanager(FIXTURES[name])(d, env, py))
        yield py


def run_shell(b: Block, d: Path, env: dict[str, str]) -> None:
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", shell_script(b)], cwd=d, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT)
    _check(r, f"{b.id} ({b.lang} block)")


def run_python(prelude: list[str], b: Block, d: Path, env: dict[str, str]) -> None:
    """Run `b` after `prelude` in a fresh interpreter (`python -c`), as a notebook or a
    REPL runs it: its `__main__` has no file, so the worker processes Dask spawns do
    not run the example again (it needs no `if __name__ == "__main__"` guard)."""
    r = subprocess.run([sys.executable, "-c", "".join(prelude) + python_chunk(b)], cwd=d,
                       env=env, capture_output=True, text=True, timeout=TIMEOUT)
    _check(r, f"{b.id} (python block)")


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_doc_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    reason = block.mark("skip")
    if reason is not None:
        assert reason, f"{block.id}: a skip needs a reason"
        pytest.skip(reason)
    d = tmp_path / "work"
    d.mkdir()
    run_block(block, d)


def run_block(block: Block, d: Path) -> None:
    """Run `block` after its set-up in directory `d`; fail on a mount it left."""
    env = environment(d)
    try:
        with prepared(block, d, env) as prelude:
            if block.lang == "python":
                run_python(prelude, block, d, env)
            else:
                run_shell(block, d, env)
    finally:
        left = unmount_under(d)
    assert not left, f"{block.id} left FUSE mounts behind: {left} (show the umount too)"


def unmount_under(d: Path) -> list[str]:
    """Unmount (lazily) every mount below `d` that an example left; returns them."""
    left = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(d) + "/")]
    for m in left:
        subprocess.run(["fusermount3", "-u", "-z", m], capture_output=True, timeout=30)
    return left


def _close_dataflows(tests: list[doctest.DocTest]) -> None:
    """Close what a failed example left open (Dataflow objects and their clusters)."""
    for t in tests:
        for v in t.globs.values():
            if type(v).__module__.startswith("dataflow.") and hasattr(v, "close"):
                v.close()


@pytest.mark.parametrize("module", sorted(DOCTEST_MODULES))
def test_module_doctests(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `>>>` examples of a public module's docstrings, after their set-up."""
    mod = importlib.import_module(module)
    tests = [t for t in doctest.DocTestFinder().find(mod) if t.examples]
    assert tests, f"{module} has no doctests; drop it from DOCTEST_MODULES"
    env = environment(tmp_path)
    monkeypatch.chdir(tmp_path)
    for k in ("HOME", "HUTONG_STATE"):
        monkeypatch.setenv(k, env[k])
    globs: dict[str, object] = {"__name__": "__main__"}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with ExitStack() as stack:
        for setup in DOCTEST_MODULES[module]:
            if setup in FIXTURES:
                stack.enter_context(contextmanager(FIXTURES[setup])(tmp_path, env, []))
                continue
            file, _, name = setup.partition("#")
            [b] = [x for x in ALL if x.file == ROOT / file and x.mark("name") == name]
            exec(compile("\n" * (b.line - 1) + b.code, b.id, "exec"), globs)
        stack.callback(_close_dataflows, tests)
        for t in tests:
            t.globs.update(globs)
            runner.run(t)
    assert runner.failures == 0, f"{runner.failures} doctest(s) of {module} failed (see above)"


# -- the runner itself ------------------------------------------------------------------------


def test_parse_reads_languages_markers_and_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.md"
    p.write_text("text\n<!-- doctest: name=one -->\n<!-- doctest: setup=dataset -->\n"
                 "```sh\necho hi\n```\n\n```python\nprint(1)\n```\n```\nplain\n```\n")
    a, b, c = parse(p)
    assert (a.lang, a.line, a.code, a.mark("name"), a.setup) == (
        "sh", 5, "echo hi\n", "one", ["dataset"])
    assert (b.lang, b.line, b.marks) == ("python", 9, ())
    assert c.lang == ""


def test_console_blocks_run_only_prompt_lines() -> None:
    b = Block(ROOT / "README.md", 1, "console", "$ echo a\na\n$ true\n", ())
    assert shell_script(b) == "echo a\ntrue\n"


def test_every_skip_states_a_reason_and_setups_resolve() -> None:
    for b in RUNNABLE:
        if b.mark("skip") is not None:
            assert len(b.mark("skip") or "") > 10, f"{b.id}: state why it cannot run in CI"
        for s in b.setup:
            assert named(b, s) is not None or s in FIXTURES, f"{b.id}: unknown setup {s!r}"


def test_a_failing_block_fails_the_test(tmp_path: Path) -> None:
    """The runner notices a command that fails mid-block (bash -e, not only the last)."""
    b = Block(ROOT / "README.md", 1, "sh", "false\necho after\n", ())
    with pytest.raises(AssertionError, match="exited 1"):
        run_shell(b, tmp_path, environment(tmp_path))
    p = Block(ROOT / "README.md", 7, "python", "raise ValueError('boom')\n", ())
    with pytest.raises(AssertionError, match=r'README.md", line 7.*\n.*|boom'):
        run_python([], p, tmp_path, environment(tmp_path))


def test_a_mount_left_behind_fails_the_block_and_is_unmounted(tmp_path: Path) -> None:
    b = Block(ROOT / "README.md", 1, "sh",
              "hutong init -q\nmkdir mnt\nhutong mount mnt --background\nls mnt\n", ())
    with pytest.raises(AssertionError, match="left FUSE mounts"):
        run_block(b, tmp_path)
    assert unmount_under(tmp_path) == []
