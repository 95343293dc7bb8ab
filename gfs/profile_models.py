"""The models of the profiles file (gfs.profiles), apart so that a command run without
a profiles file never imports pydantic."""

from __future__ import annotations

from pydantic import Field, model_validator

from gfs.profiles import check_profile_name, check_registry_url
from gfs.schema import Schema


class Profile(Schema):
    """One profile of the profiles file."""

    registry: str
    entity: str
    token: str | None = None
    keys: str | None = None
    near: str | None = None
    cache_dir: str | None = None
    registry_ca: str | None = None
    """The registry's CA certificate (PEM), copied in by `add_profile`."""
    plaintext: bool = False
    """Plain http:// to the registry and sites (`--insecure-plaintext`)."""

    @model_validator(mode="after")
    def _one_identity(self) -> Profile:
        from gfs.federation.ids import check_name

        check_registry_url(self.registry)
        check_name(self.entity, "entity")
        if (self.token is None) == (self.keys is None):
            raise ValueError("give exactly one identity: a token or a keys directory")
        if self.near is not None:
            check_name(self.near, "site")
        if self.registry_ca is not None:
            from gfs.federation.tls import read_registry_ca

            read_registry_ca(self.registry_ca)  # a ConfigError is a ValueError: key named
        return self


class ProfilesFile(Schema):
    """The profiles file: the profiles by name and the one `hutong profile use` chose."""

    current: str | None = None
    profiles: dict[str, Profile] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _current_exists(self) -> ProfilesFile:
        for name in self.profiles:
            check_profile_name(name)
        if self.current is not None and self.current not in self.profiles:
            raise ValueError(f"current profile {self.current!r} is not defined; run "
                             "`hutong profile use NAME` with a listed profile")
        return self


__all__ = ["Profile", "ProfilesFile"]
