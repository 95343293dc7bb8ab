"""A second dataflow driver, as its own process: `python -m tests.dataflow_driver_child
SITES GATE LEASE_SECONDS` runs one job over /bank-a/in/** at site c whose copies over the
link a -> c wait for the file GATE (a slow WAN, emulated: the copy starts once GATE
exists, at most 120 s), prints `running` once the job is planned and its lease
published, then `done` when the job has finished."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from dataflow import Dataflow, InputFile, Topology
from gfs import mover


def size(inputs: list[InputFile]) -> int:
    return sum(f.size for f in inputs)


def main() -> None:
    sites, gate, ttl = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    real = mover.fetch

    def slow_wan(*a: Any, **k: Any) -> Any:
        deadline = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return real(*a, **k)
    mover.fetch = slow_wan  # type: ignore[assignment]
    with Dataflow(Topology.from_config(sites), processes=False, progress=False,
                  lease_seconds=ttl) as df:
        job = df.run(size, "/bank-a/in/**", at="c", wait=False)
        wan = job.plan.estimate.wan_bytes
        deadline = time.monotonic() + 60              # planned, then its lease published
        while df.catalog.load_state("lease", job.id) is None:
            assert time.monotonic() < deadline, "the job's lease was never published"
            time.sleep(0.02)
        print("running", job.id, wan, flush=True)
        job.wait(300)
        print("done", flush=True)


if __name__ == "__main__":
    main()
