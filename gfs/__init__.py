"""gfs: the Hutong global file system.

Embedded mode (one machine, no server): `Client.init(state)` once, then
`Client.open(state)`; see gfs.client for the API and `hutong --help` for the
command line. Formats and invariants: docs/format.md.
"""

from gfs.client import Client, DuReport, Stat, TransferReport
from gfs.errors import HutongError

__all__ = ["Client", "DuReport", "HutongError", "Stat", "TransferReport"]
__version__ = "0.1.0"
