"""`python -m bench NAME [args]`: run the benchmark module `bench.NAME`.

Each benchmark module has `main(argv: list[str]) -> int`, prints a table with
the peer or the physical limit measured in the same run, and ends with one
line `NAME: key=value ... target=met|missed`.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _names() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
        and m.name not in {"report", "datasets"}
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m bench NAME [--quick] [options]")
        print("benchmarks: " + ", ".join(_names()))
        return 0 if argv else 2
    name = argv[0]
    if name not in _names():
        print(f"bench: no benchmark named {name!r}; choose one of: {', '.join(_names())}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
