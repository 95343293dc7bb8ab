"""fsspec's own conformance suites (`fsspec.tests.abstract`) run against gfs://."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fsspec.tests import abstract

from gfs.client import Client
from gfs.fsspec_fs import HutongFileSystem


class GfsFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, tmp_path: Path) -> Iterator[HutongFileSystem]:
        client = Client.init(tmp_path / "state", pack_size=1 << 20, workers=2)
        try:
            yield HutongFileSystem(client=client, skip_instance_cache=True)
        finally:
            client.close()

    @pytest.fixture
    def fs_path(self) -> str:
        return "/work"


class TestGfsCopy(abstract.AbstractCopyTests, GfsFixtures):  # type: ignore[misc]
    pass


class TestGfsGet(abstract.AbstractGetTests, GfsFixtures):  # type: ignore[misc]
    pass


class TestGfsPut(abstract.AbstractPutTests, GfsFixtures):  # type: ignore[misc]
    pass


class TestGfsPipe(abstract.AbstractPipeTests, GfsFixtures):  # type: ignore[misc]
    pass


class TestGfsOpen(abstract.AbstractOpenTests, GfsFixtures):  # type: ignore[misc]
    pass
