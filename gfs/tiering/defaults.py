"""Where the tiering policy is stored and the defaults a store uses until one is set,
apart from the policy model so that opening a store never imports pydantic."""

#: The key of the stored policy in the `rules` table.
POLICY_KEY = b"tier-policy"
#: The half-life of heat, seconds.
WINDOW = 3600.0
#: The tier new chunks are written to.
WRITE_TIER = "warm"

__all__ = ["POLICY_KEY", "WINDOW", "WRITE_TIER"]
