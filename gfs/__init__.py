"""gfs: the Hutong global file system.

Embedded mode (one machine, no server): `Client.init(state)` once, then
`Client.open(state)`; see gfs.client for the API and `hutong --help` for the
command line. Formats and invariants: docs/format.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gfs._lazy import lazy_exports

if TYPE_CHECKING:
    from gfs.client import Client, TransferReport
    from gfs.errors import HutongError
    from gfs.namespace_api import DuReport, Namespace, Stat

__all__ = ["Client", "DuReport", "HutongError", "Namespace", "Stat", "TransferReport"]
__version__ = "0.1.0"

__getattr__ = lazy_exports(__name__, {
    "Client": "gfs.client", "DuReport": "gfs.namespace_api", "Stat": "gfs.namespace_api",
    "Namespace": "gfs.namespace_api",
    "TransferReport": "gfs.client", "HutongError": "gfs.errors",
})
