"""Profiles: named ways into the federation, and `open_namespace`, the one door to a tree.

    hutong profile add work --registry https://10.0.0.1:8700 --entity telco-b --token T \
        --registry-ca ca.pem
    hutong profile use work          # or HUTONG_PROFILE=work, or --profile work

    ns = gfs.open_namespace()        # the selected profile, else the embedded store
    ns.ls("/")                       # on a profile: the entities the caller may see

A profile names a registry, the entity it acts for and one identity: a user token
of that entity or a directory of the entity's keys (never both), optionally the
site to read near and a disk cache directory. The registry's CA certificate
(`--registry-ca FILE`, its STATE/tls/ca.pem) is copied into the profile, so the
profile keeps working when the file moves; a keys directory of a site brings the CA
it pinned at `hutong site init`. A plain http:// registry needs `--insecure-plaintext`
(a development machine only). Profiles live in one TOML file,
`$HUTONG_PROFILES`, else `$XDG_CONFIG_HOME/hutong/profiles.toml`, else
`~/.config/hutong/profiles.toml` (mode 0600: it holds tokens). The profile in use
is the argument, else `$HUTONG_PROFILE`, else the file's `current` (set by
`hutong profile use`); the reserved name `local` means the embedded store.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfs.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    from gfs.namespace_api import Namespace
    from gfs.profile_models import Profile, ProfilesFile

#: The profiles file (tests and scripts point it elsewhere).
PROFILES_ENV = "HUTONG_PROFILES"
#: The profile in use, unless a command names one.
PROFILE_ENV = "HUTONG_PROFILE"
#: The reserved profile name of the embedded store (no federation).
LOCAL = "local"
#: compiled (and cached by `re`) when a name is checked, not at every command's start-up
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


class ProfileError(ConfigError):
    """A profile is missing, invalid or cannot be used; the message names it and the fix."""


def check_profile_name(name: str) -> str:
    """`name` if it may name a profile, else ProfileError."""
    if not isinstance(name, str) or not re.fullmatch(_NAME, name):
        raise ProfileError(f"profile name {name!r} is invalid: use 1 to 64 characters "
                           "A-Z a-z 0-9 _ . -, starting with a letter or digit")
    if name == LOCAL:
        raise ProfileError(f"profile name {LOCAL!r} is reserved for the embedded store; "
                           "choose another name")
    return name


def check_registry_url(url: str) -> str:
    """`url` without a trailing slash if it is an http(s) URL with a host, else ProfileError."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ProfileError(f"registry URL {url!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise ProfileError(f"registry URL {url!r} is invalid: use http://HOST:PORT (the URL "
                           "`hutong registry serve` prints)")
    return url.rstrip("/")


def profiles_path() -> Path:
    """The profiles file (see the module docstring for the order)."""
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env).expanduser().absolute()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return (Path(base).expanduser() / "hutong" / "profiles.toml").absolute()


def load_profiles(path: Path | None = None) -> ProfilesFile:
    """The profiles file (empty when it does not exist); SchemaError naming the key and
    the file when it is malformed."""
    from gfs.profile_models import ProfilesFile
    from gfs.schema import load

    p = path or profiles_path()
    if not p.exists():
        return ProfilesFile()
    return load(ProfilesFile, p, what="profiles file")


def save_profiles(pf: ProfilesFile, path: Path | None = None) -> Path:
    """Write `pf` atomically, readable by its owner only (it holds tokens)."""
    p = path or profiles_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Hutong profiles: `hutong profile add|ls|use|rm` (docs/profiles.md)"]
    if pf.current is not None:
        lines.append(f"current = {json.dumps(pf.current)}")
    for name, prof in sorted(pf.profiles.items()):
        lines.append(f"\n[profiles.{json.dumps(name)}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in prof.model_dump().items()
                  if v is not None and v is not False]  # defaults left out
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, p)
    return p


def _check_identity(entity: str, token: str | None, keys: str | None) -> None:
    """The token was issued by `entity`, or the keys directory holds `entity`'s keys."""
    from gfs.federation.auth import EntityKeys, token_claims

    if token is not None:
        try:
            issuer = token_claims(token).get("iss")
        except Exception:  # any malformed token: one clear message
            raise ProfileError("the token is not a Hutong user token; mint one with "
                               "`hutong token mint` at the entity") from None
        if issuer != entity:
            raise ProfileError(f"the token was issued by entity {issuer!r}, not {entity!r}; "
                               "pass the entity that minted it")
    if keys is not None:
        d = Path(keys)
        if not d.is_dir():
            raise ProfileError(f"keys directory {keys} does not exist; pass the directory "
                               "holding the entity's keys (a site's STATE/federation)")
        try:
            name = EntityKeys.load(d).name
        except Exception as e:  # StateError, or a damaged key file
            raise ProfileError(f"keys directory {keys} holds no usable entity keys ({e}); "
                               "pass a site's STATE/federation directory") from None
        if name != entity:
            raise ProfileError(f"keys directory {keys} holds the keys of entity {name!r}, "
                               f"not {entity!r}")


def _registry_ca(name: str, url: str, registry_ca: bytes | str | os.PathLike[str] | None,
                 plaintext: bool) -> str | None:
    """The PEM text of `registry_ca` (a file or PEM), checked; ProfileError otherwise."""
    from gfs.federation import PLAINTEXT_OPTION
    from gfs.federation.tls import read_registry_ca

    if url.startswith("http://") and not plaintext:
        raise ProfileError(f"profile {name!r}: registry {url} is plain http://, unencrypted "
                           f"and unauthenticated; use its https:// URL, or {PLAINTEXT_OPTION} "
                           "on a development machine")
    if url.startswith("https://") and plaintext:
        raise ProfileError(f"profile {name!r}: {PLAINTEXT_OPTION} is for an http:// "
                           f"registry, and {url} is https://; drop it")
    if registry_ca is None:
        return None
    if plaintext:
        raise ProfileError(f"profile {name!r}: --registry-ca checks an https:// registry; "
                           f"drop it or {PLAINTEXT_OPTION}")
    source = registry_ca if isinstance(registry_ca, (bytes, str)) else Path(registry_ca)
    try:
        return read_registry_ca(source).decode("ascii")
    except (ConfigError, UnicodeDecodeError) as e:
        raise ProfileError(f"profile {name!r}: {e}") from None


def _site_keys(keys: str | None) -> bool:
    """Whether keys directory `keys` is a site's, with the registry CA it pinned."""
    from gfs.federation import certs

    return keys is not None and (Path(keys) / "tls" / certs.REGISTRY_CA).exists()


def add_profile(name: str, *, registry: str, entity: str, token: str | None = None,
                keys: str | os.PathLike[str] | None = None, near: str | None = None,
                cache_dir: str | os.PathLike[str] | None = None,
                registry_ca: bytes | str | os.PathLike[str] | None = None,
                plaintext: bool = False, path: Path | None = None) -> Profile:
    """Add profile `name` (an existing one of that name is replaced); nothing is written
    unless every value is valid. `registry_ca` (PEM, or its file) is copied into the
    profile; `plaintext` allows an http:// registry."""
    check_profile_name(name)
    if token is not None and keys is not None:
        raise ProfileError("give --token or --keys, not both: a profile has one identity")
    if token is None and keys is None:
        raise ProfileError("no identity: pass --token TOKEN (a user token of the entity) "
                           "or --keys DIR (the entity's keys)")
    keys_dir = str(Path(keys).expanduser().absolute()) if keys is not None else None
    cache = str(Path(cache_dir).expanduser().absolute()) if cache_dir is not None else None
    url = check_registry_url(registry)
    ca = _registry_ca(name, url, registry_ca, plaintext)
    from gfs.profile_models import Profile
    try:
        prof = Profile(registry=url, entity=entity, token=token, keys=keys_dir, near=near,
                       cache_dir=cache, registry_ca=ca, plaintext=plaintext)
    except SchemaError as e:
        raise ProfileError(f"profile {name!r}: {'; '.join(e.problems)}") from None
    _check_identity(entity, token, keys_dir)
    if ca is None and url.startswith("https://") and not _site_keys(keys_dir):
        raise ProfileError(f"profile {name!r}: no CA to check registry {url}; pass "
                           "--registry-ca FILE (the registry's STATE/tls/ca.pem)")
    pf = load_profiles(path)
    pf.profiles[name] = prof
    save_profiles(pf, path)
    return prof


def get_profile(name: str, path: Path | None = None) -> Profile:
    """Profile `name`; ProfileError naming the remedy when there is none."""
    pf = load_profiles(path)
    prof = pf.profiles.get(name)
    if prof is None:
        known = ", ".join(sorted(pf.profiles)) or "none yet"
        raise ProfileError(f"no profile {name!r} (known: {known}); add it with `hutong "
                           "profile add NAME --registry URL --entity E --token T`")
    return prof


def use_profile(name: str, path: Path | None = None) -> None:
    """Make `name` the profile in use (`local`: the embedded store)."""
    pf = load_profiles(path)
    if name != LOCAL:
        get_profile(name, path)
    pf.current = None if name == LOCAL else name
    save_profiles(pf, path)


def remove_profile(name: str, path: Path | None = None) -> None:
    """Remove profile `name` (if it was in use, the embedded store is used again)."""
    get_profile(name, path)
    pf = load_profiles(path)
    del pf.profiles[name]
    if pf.current == name:
        pf.current = None
    save_profiles(pf, path)


def selected(name: str | None = None, path: Path | None = None) -> str | None:
    """The profile in use: `name`, else $HUTONG_PROFILE, else the file's `current`;
    None (or `local`) means the embedded store."""
    chosen = name or os.environ.get(PROFILE_ENV) or None
    if chosen is None:
        p = path or profiles_path()
        chosen = load_profiles(p).current if p.exists() else None
    return None if chosen in (None, LOCAL) else chosen


def open_namespace(profile: str | None = None, *, state: str | os.PathLike[str] | None = None,
                   memory_bytes: int | None = None, **settings: Any) -> Namespace:
    """The namespace of `profile` (else the selected one, see `selected`): a
    `FederatedNamespace` on a profile, else the embedded store `gfs.Client(state)`.

    `memory_bytes` sizes the memory tier of chunk reads; `settings` go to the embedded
    store (store settings) and are refused on a profile."""
    name = selected(profile)
    if name is None:
        from gfs.client import Client

        client = Client(state, **settings)
        if memory_bytes is not None:
            client.cache_reads(memory_bytes)
        return client
    if settings:
        raise ProfileError(f"profile {name!r} opens the federation; store settings "
                           f"({', '.join(sorted(settings))}) apply to an embedded store only")
    prof = get_profile(name)
    from gfs.federation.auth import EntityKeys
    from gfs.federation.namespace import FederatedNamespace

    keys = EntityKeys.load(prof.keys) if prof.keys is not None else None
    ns: Namespace = FederatedNamespace(
        prof.registry, keys=keys, token=prof.token, entity=prof.entity, near=prof.near,
        cache_dir=Path(prof.cache_dir) if prof.cache_dir else None, memory_bytes=memory_bytes,
        registry_ca=prof.registry_ca, plaintext=prof.plaintext)
    return ns


def __getattr__(name: str) -> Any:
    if name in ("Profile", "ProfilesFile"):  # pydantic models, loaded when asked for
        from gfs import profile_models
        return getattr(profile_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LOCAL", "PROFILES_ENV", "PROFILE_ENV", "Profile", "ProfileError", "ProfilesFile",
           "add_profile", "check_profile_name", "get_profile", "load_profiles",
           "open_namespace", "profiles_path", "remove_profile", "save_profiles", "selected",
           "use_profile"]
