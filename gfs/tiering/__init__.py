"""Intelligent tiered storage: heat, policies, placement plans and the tierer.

Chunks live in pools of tier `hot`, `warm` or `cold`. Reads record heat
(`heat.HeatTracker`, decayed access counts, flushed in batches); a policy
(`policy.TierPolicy`, stored as data in the store) says when a chunk is hot
enough to promote, idle enough to demote, which paths are pinned, and what
each tier costs; `planner.plan` turns heat and policy into moves within each
tier's capacity; `tierer.run` carries them out: copy, verify, switch the
location, then release the old copy, so a crash at any step leaves every
chunk readable.
"""

from typing import TYPE_CHECKING

from gfs._lazy import lazy_exports

if TYPE_CHECKING:
    from gfs.env import TIERS
    from gfs.tiering.policy import TierPolicy

__all__ = ["TIERS", "TierPolicy"]

__getattr__ = lazy_exports(__name__, {"TIERS": "gfs.env",
                                       "TierPolicy": "gfs.tiering.policy"})
