"""Stateful property test: the namespace behaves like a simple model of a POSIX tree.

Hypothesis drives random sequences of mkdir, write, rm, mv, symlink, link,
mknod and read against a real store (small chunks, so files span many chunks
and share them) and a dictionary model whose files are shared boxes (a hard
link is a second path to the same box); after every step the whole tree, every
file's content, inode identity and link counts, and the chunk refcounts must
agree, and refused operations must change nothing.
It runs on the embedded LMDB engine and on the PostgreSQL engine (a real
server from the `postgres_server` fixture).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gfs import namespace
from gfs.client import Client
from gfs.errors import (
    ExistsError,
    HutongError,
    InvalidPathError,
    IsADirError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
    NotPermittedError,
)
from gfs.meta import Kind
from gfs.meta.pg_engine import PgEngine
from gfs.testing.postgres import PostgresServer

NAMES = st.sampled_from(["a", "b", "c", "dé"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
BASE = bytes(range(256)) * 40
DATA = st.one_of(
    st.binary(max_size=3000),
    st.tuples(st.integers(0, 5000), st.integers(0, 5000)).map(lambda t: BASE[t[0]:t[0] + t[1]]),
)

class Box:
    """A file of the model: every path linked to it shares it (hard links)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


#: ("dir", b""), ("file", box), ("link", target), ("fifo" | "socket" | "chardev", b"")
Node = tuple[str, "bytes | str | Box"]
SPECIALS = {"fifo": Kind.FIFO, "socket": Kind.SOCKET, "chardev": Kind.CHARDEV}


class NamespaceModel(RuleBasedStateMachine):
    #: The metadata database of each example's store (None: embedded LMDB).
    database: PostgresServer | None = None

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="hutong-model-"))
        meta = None
        if self.database is not None:
            meta = self.database.url_for(f"m_{uuid.uuid4().hex[:16]}")
        self.fs = Client.init(self.tmp / "state", meta=meta, min_size=256, avg_size=1024,
                              max_size=4096, pack_size=1 << 16, workers=2)
        self.model: dict[str, Node] = {"/": ("dir", b"")}
        self.steps = 0

    def teardown(self) -> None:
        try:
            report = self.fs.fsck()
            assert report.ok, report.problems
            self.fs.gc()
            after = self.fs.fsck()
            assert after.ok and after.unreferenced_chunks == 0, after.problems
            self._check_tree()
        finally:
            self.fs.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(self.fs.engine, PgEngine):
                eng = PgEngine(self.fs.engine.url)
                eng.drop()
                eng.close()

    # -- model helpers -------------------------------------------------------
    @staticmethod
    def parent(p: str) -> str:
        return p.rsplit("/", 1)[0] or "/"

    def children(self, p: str) -> list[str]:
        prefix = p.rstrip("/") + "/"
        return [k for k in self.model if k.startswith(prefix) and "/" not in k[len(prefix):]]

    def lookup_error(self, p: str) -> type[Exception] | None:
        """The error resolving `p` gives in the model (None if it exists)."""
        parts = p.strip("/").split("/")
        cur = ""
        for i, name in enumerate(parts):
            cur = f"{cur}/{name}"
            node = self.model.get(cur)
            if node is None:
                return NotFoundError
            if i < len(parts) - 1 and node[0] != "dir":
                return NotADirError
        return None

    def parent_error(self, p: str) -> type[Exception] | None:
        par = self.parent(p)
        if par == "/":
            return None
        err = self.lookup_error(par)
        if err is not None:
            return err
        return None if self.model[par][0] == "dir" else NotADirError

    def expect(self, err: type[Exception] | None, fn: object, *args: object) -> bool:
        before = dict(self.model)
        try:
            fn(*args)  # type: ignore[operator]
        except HutongError as e:
            assert err is not None, f"unexpected {type(e).__name__}: {e}"
            assert isinstance(e, err), f"expected {err.__name__}, got {type(e).__name__}: {e}"
            assert self.model == before
            return False
        assert err is None, f"expected {err.__name__}, operation succeeded"
        return True

    def remove_subtree(self, p: str) -> None:
        prefix = p.rstrip("/") + "/"
        for k in [k for k in self.model if k == p or k.startswith(prefix)]:
            del self.model[k]

    # -- rules ---------------------------------------------------------------
    @rule(p=PATHS)
    def mkdir(self, p: str) -> None:
        err = self.parent_error(p) or (ExistsError if p in self.model else None)
        if self.expect(err, self.fs.mkdir, p):
            self.model[p] = ("dir", b"")

    @rule(p=PATHS, data=DATA)
    def write(self, p: str, data: bytes) -> None:
        err = self.parent_error(p)
        if err is None and p in self.model and self.model[p][0] == "dir":
            err = IsADirError
        if self.expect(err, self.fs.write_bytes, p, data):
            node = self.model.get(p)
            if node is not None and isinstance(node[1], Box):
                node[1].data = data  # same inode: seen through every link
            else:
                self.model[p] = ("file", Box(data))

    @rule(p=PATHS, link_to=st.sampled_from(["a", "../x", "/abs/path"]))
    def symlink(self, p: str, link_to: str) -> None:
        err = self.parent_error(p) or (ExistsError if p in self.model else None)
        if self.expect(err, self.fs.symlink, p, link_to):
            self.model[p] = ("link", link_to)

    @rule(p=PATHS, recursive=st.booleans())
    def rm(self, p: str, recursive: bool) -> None:
        err = self.lookup_error(p)
        if err is None and self.model[p][0] == "dir" and self.children(p) and not recursive:
            err = NotEmptyError
        if self.expect(err, lambda: self.fs.rm(p, recursive=recursive)):
            self.remove_subtree(p)

    @rule(src=PATHS, dst=PATHS)
    def mv(self, src: str, dst: str) -> None:
        err = self.lookup_error(src)
        final = dst
        if err is None:
            if dst in self.model and self.model[dst][0] == "dir":
                final = dst.rstrip("/") + "/" + src.rsplit("/", 1)[1]
            err = self.parent_error(final)
        if err is None and final != src:
            kind = self.model[src][0]
            if kind == "dir" and (final + "/").startswith(src + "/"):
                err = InvalidPathError
            elif final in self.model:
                tkind = self.model[final][0]
                if kind == "dir" and tkind != "dir":
                    err = NotADirError
                elif kind != "dir" and tkind == "dir":
                    err = IsADirError
                elif tkind == "dir" and self.children(final):
                    err = NotEmptyError
        # (directories have no hard links, and all share one ("dir", b"") tuple)
        if err is None and final in self.model and self.model[src][0] != "dir" \
                and self.model[final] is self.model[src]:
            final = src  # two links to one inode: rename does nothing
        if self.expect(err, self.fs.mv, src, dst) and final != src:
            moved = {k: v for k, v in self.model.items() if k == src or k.startswith(src + "/")}
            self.remove_subtree(final)
            for k in moved:
                del self.model[k]
            for k, v in moved.items():
                self.model[final + k[len(src):]] = v

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        # mostly an existing source and a free name in an existing directory
        existing = sorted(p for p in self.model if p != "/")
        src = data.draw(st.sampled_from(existing) if existing and data.draw(st.booleans())
                        else PATHS)
        dirs = sorted(p for p, n in self.model.items() if n[0] == "dir")
        dst = data.draw(PATHS | st.tuples(st.sampled_from(dirs), NAMES).map(
            lambda t: t[0].rstrip("/") + "/" + t[1]))
        err = self.lookup_error(src) or self.parent_error(dst)
        if err is None and self.model[src][0] == "dir":
            err = NotPermittedError
        if err is None and dst in self.model:
            err = ExistsError
        if self.expect(err, self.fs.link, src, dst):
            self.model[dst] = self.model[src]

    @rule(p=PATHS, kind=st.sampled_from(sorted(SPECIALS)))
    def mknod(self, p: str, kind: str) -> None:
        err = self.parent_error(p) or (ExistsError if p in self.model else None)
        if self.expect(err, self.fs.mknod, p, SPECIALS[kind], 0o640, 0x0103):
            self.model[p] = (kind, b"")

    @precondition(lambda self: any(v[0] == "file" for v in self.model.values()))
    @rule(data=st.data())
    def read_range(self, data: st.DataObject) -> None:
        files = sorted(k for k, v in self.model.items() if v[0] == "file")
        p = data.draw(st.sampled_from(files))
        box = self.model[p][1]
        assert isinstance(box, Box)
        content = box.data
        a = data.draw(st.integers(0, len(content) + 10))
        b = data.draw(st.integers(a, len(content) + 20))
        assert self.fs.read_bytes(p, a, b) == content[a:b]

    @rule()
    def gc(self) -> None:
        self.fs.gc()

    # -- invariants ----------------------------------------------------------
    def _check_tree(self) -> None:
        seen: dict[str, tuple[str, bytes | str]] = {}
        for s in self.fs.walk("/"):
            if s.kind == "dir":
                seen[s.path] = ("dir", b"")
            elif s.kind == "symlink":
                seen[s.path] = ("link", s.target)
            elif s.kind == "file":
                seen[s.path] = ("file", self.fs.read_bytes(s.path))
            else:
                seen[s.path] = (s.kind, b"")
        assert seen == {p: (k, v.data if isinstance(v, Box) else v)
                        for p, (k, v) in self.model.items()}
        # inode identity and link counts: one inode per model node, nlink = its paths
        with self.fs.engine.read() as txn:
            inos = {p: namespace.resolve(txn, p) for p in self.model}
        for p, node in self.model.items():
            if node[0] == "dir":
                subdirs = [c for c in self.children(p) if c != p and self.model[c][0] == "dir"]
                assert inos[p].nlink == 2 + len(subdirs), p
                continue
            same = [q for q, n in self.model.items() if n is node or
                    (isinstance(n[1], Box) and n[1] is node[1])]
            assert inos[p].nlink == len(same), p
            assert {inos[q].ino for q in same} == {inos[p].ino}, p

    @invariant()
    def tree_matches_model(self) -> None:
        self._check_tree()

    @invariant()
    def refcounts_consistent(self) -> None:
        self.steps += 1
        if self.steps % 5 == 0:
            report = self.fs.fsck(verify_data=False)
            assert report.ok, report.problems


NamespaceModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestNamespaceModel = NamespaceModel.TestCase


def test_namespace_model_on_postgresql(postgres_server: PostgresServer) -> None:
    class OnPostgres(NamespaceModel):
        database = postgres_server

    run_state_machine_as_test(OnPostgres, settings=settings(
        max_examples=40, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
