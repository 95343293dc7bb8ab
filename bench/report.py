"""Table and headline printing shared by the benchmarks."""

from __future__ import annotations

import os
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    def line(values: Sequence[str]) -> str:
        pairs = enumerate(zip(values, widths, strict=True))
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in pairs)
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def headline(name: str, met: bool, **figures: object) -> str:
    """The closing line `NAME: key=value ... target=met|missed`."""
    parts = [f"{k}={_fmt(v)}" for k, v in figures.items()]
    parts.append(f"target={'met' if met else 'missed'}")
    return f"{name}: " + " ".join(parts)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, "1.2/0.9/0.7" (the machine is shared)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
