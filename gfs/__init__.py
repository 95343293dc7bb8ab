"""gfs: the Hutong global file system.

`gfs.open_namespace(profile=None)` opens the tree behind every door: the
federation of a profile (gfs.profiles), else the embedded store. Embedded mode
(one machine, no server): `Client.init(state)` once, then `Client(state)`; see
gfs.client for the API and `hutong --help` for the command line. Formats and
invariants: docs/format.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gfs._lazy import lazy_exports

if TYPE_CHECKING:
    from gfs.client import Client, TransferReport
    from gfs.errors import HutongError
    from gfs.namespace_api import DuReport, Namespace, Stat
    from gfs.profiles import open_namespace

__all__ = ["Client", "DuReport", "HutongError", "Namespace", "Stat", "TransferReport",
           "open_namespace"]
__version__ = "0.1.0"

__getattr__ = lazy_exports(__name__, {
    "Client": "gfs.client", "DuReport": "gfs.namespace_api", "Stat": "gfs.namespace_api",
    "Namespace": "gfs.namespace_api",
    "TransferReport": "gfs.client", "HutongError": "gfs.errors",
    "open_namespace": "gfs.profiles",
})
