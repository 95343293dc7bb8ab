"""What of the global tree a caller may see: entities and the path prefixes they show.

The federation's `/` lists the visible entities (the caller's own first); below
`/E`, a caller that sees all of E gets E's real tree, and a grantee sees only
the directories leading to its granted prefixes (synthesised here) and the real
tree below each prefix. Anything else does not exist for the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gfs import paths

Place = Literal["root", "synthetic", "real", "hidden"]


@dataclass(frozen=True)
class Visibility:
    """The entities a caller sees, in listing order, each with its visible prefixes
    (normalised absolute paths under `/ENTITY`; `["/E"]` for all of E)."""

    entities: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def of(cls, own: str | None, prefixes: dict[str, list[str]]) -> Visibility:
        """Entities with at least one prefix, `own` first, the others by name; prefixes
        outside their entity are dropped, and one below another is folded into it."""
        out: list[tuple[str, tuple[str, ...]]] = []
        for ent in sorted(prefixes, key=lambda e: (e != own, e)):
            kept: list[str] = []
            for p in sorted(paths.normalize(p) for p in prefixes[ent]):
                parts = paths.split(p)
                if not parts or parts[0] != ent:
                    continue
                if not any(_under(p, k) for k in kept):
                    kept.append(p)
            if kept:
                out.append((ent, tuple(kept)))
        return cls(tuple(out))

    def names(self) -> list[str]:
        """The visible entities in listing order."""
        return [e for e, _ in self.entities]

    def prefixes(self, entity: str) -> tuple[str, ...]:
        return dict(self.entities).get(entity, ())

    def place(self, norm: str) -> Place:
        """Where normalised path `norm` falls: the root, a synthesised directory leading
        to a prefix, the real tree at a prefix or below it, or hidden."""
        parts = paths.split(norm)
        if not parts:
            return "root"
        prefixes = self.prefixes(parts[0])
        if any(_under(norm, p) for p in prefixes):
            return "real"
        if any(_under(p, norm) for p in prefixes):
            return "synthetic"
        return "hidden"

    def children(self, norm: str) -> list[str]:
        """Names of the entries of synthesised directory `norm`, sorted (of the root: the
        visible entities, the caller's own first)."""
        parts = paths.split(norm)
        if not parts:
            return self.names()
        depth = len(parts)
        return sorted({paths.split(p)[depth] for p in self.prefixes(parts[0])
                       if _under(p, norm) and p != norm})


def _under(path: str, top: str) -> bool:
    """Whether `path` is `top` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


__all__ = ["Place", "Visibility"]
