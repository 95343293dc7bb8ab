"""Real federations for tests and benchmarks: the registry and each site as processes.

    with Federation(tmp_path) as fed:
        fed.registry()                                  # 127.0.0.1
        a = fed.site("a1", "bank-a", "cn-west", primary=True)   # 127.0.0.2, its own process
        fc = fed.client("bank-a")

Each site binds its own loopback address (127.0.0.2, .3, ...) and port 0. Every
process is stopped (SIGTERM, then SIGKILL) when the block ends, even on failure.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gfs.errors import HutongError
from gfs.federation import certs
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
from gfs.federation.http import HttpClient
from gfs.federation.site import Site, init_site
from gfs.federation.tls import Trust, trust_for
from gfs.meta import LmdbEngine


class Proc:
    """One server process; `url` is what it printed when ready."""

    def __init__(self, argv: list[str], log: Path, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> None:
        """`env` is added to this process's environment."""
        self.argv = argv
        self.log = log
        with open(log, "ab") as err:
            self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1",
                                               **(env or {})})
        self.url = self._wait_banner(timeout)

    def _wait_banner(self, timeout: float) -> str:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.popen.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.popen.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if " serving on http" in line:
                        return line.rsplit(" ", 1)[-1].strip()
            elif self.popen.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"{self.argv} did not start: {buf!r}; log: "
                           f"{self.log.read_text(errors='replace')[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL after `timeout`); returns its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


class Federation:
    """A registry and sites as real processes on loopback addresses under `root`."""

    def __init__(self, root: Path, *, ttl: float = 3.0, heartbeat: float = 0.5,
                 reconcile_interval: float = 0.0, tier_interval: float = 0.0,
                 wan: Any = None, key_cache: float | None = None) -> None:
        """With `wan` (a gfs.testing.wan.Wan), processes run in its namespaces: pass
        `netns=` (a WAN site name) to `registry` and `site`."""
        self.root = Path(root)
        self.wan = wan
        self.ttl, self.heartbeat, self.reconcile_interval = ttl, heartbeat, reconcile_interval
        self.tier_interval = tier_interval
        self.key_cache = key_cache
        self.registry_proc: Proc | None = None
        self.registry_url = ""
        self.registry_ca = b""
        self.registry_ca_file = self.root / "registry" / "tls" / certs.CA_CERT
        """The registry's CA certificate (PEM), pinned by every site and client."""
        self.trust: Trust | None = None
        """Trust of a party without a certificate (a user with a token): the registry's
        CA, and the entity CAs it publishes."""
        self.sites: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, Proc] = {}
        self._next_ip = 2

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gfs.cli", *args]

    def _in(self, netns: str | None, argv: list[str]) -> list[str]:
        return argv if netns is None else list(self.wan[netns].argv(argv))

    def registry(self, netns: str | None = None, admission: str = "operator") -> str:
        """Start the registry; returns its URL. With operator admission (the default),
        `site` admits each new entity as the registry's operator would."""
        d = self.root / "registry"
        d.mkdir(parents=True, exist_ok=True)
        host = "127.0.0.1" if netns is None else self.wan[netns].address
        self.registry_proc = Proc(self._in(netns, self._cli(
            "registry", "serve", "--state", str(d), "--host", host, "--ttl", str(self.ttl),
            "--admission", admission)), self.root / "registry.log")
        self.registry_url = self.registry_proc.url
        self.registry_ca_file = d / "tls" / certs.CA_CERT
        self.registry_ca = self.registry_ca_file.read_bytes()
        self.trust = Trust(self.registry_url, self.registry_ca)
        return self.registry_url

    def site(self, name: str, entity: str, region: str, *, primary: bool = False,
             industry: str = "GEN", mover: bool = True, netns: str | None = None,
             capacity: int = 0, env: dict[str, str] | None = None,
             trusted: bool = True, meta: str | None = None) -> str:
        """Create and start a site (keys shared with the entity's first site; metadata
        on the database at `meta` if given, else embedded); `capacity`
        bounds its default pool (bytes, 0: no limit); `env` is added to its process's
        environment. The first site of an entity returns once every running site accepts
        the entity's certificate (`wait_trusted`), unless not `trusted` (a site that
        cannot register)."""
        state = self.root / name
        first = next((s for s in self.sites.values() if s["entity"] == entity), None)
        init_site(state, name=name, entity=entity, region=region, registry=self.registry_url,
                  industry=industry, primary=primary,
                  keys_from=first["state"] / "federation" if first else None,
                  registry_ca=self.registry_ca, meta=meta)
        if first is None:
            self.admit(entity, region, industry, EntityKeys.load(state / "federation"))
        if capacity:
            engine = LmdbEngine(str(state / "meta"))
            try:
                with engine.write() as txn:
                    pool = next(p for p in txn.iter_pools() if p.id == 0)
                    txn.put_pool(dataclasses.replace(pool, capacity=capacity))
            finally:
                engine.close()
        if netns is None:
            host = f"127.0.0.{self._next_ip}"
            self._next_ip += 1
        else:
            host = self.wan[netns].address
        self.sites[name] = {"state": state, "entity": entity, "host": host, "mover": mover,
                            "netns": netns, "env": env}
        url = self.start(name)
        if first is None and trusted:
            self.wait_trusted(entity)
        return url

    def admit(self, entity: str, region: str, industry: str = "GEN",
              keys: EntityKeys | None = None) -> None:
        """`hutong registry admit`: the operator admits `entity` (the keys of its first
        site, or `keys`)."""
        if keys is None:
            s = next(s for s in self.sites.values() if s["entity"] == entity)
            keys = EntityKeys.load(s["state"] / "federation")
        subprocess.run(self._cli("registry", "admit", "--state", str(self.root / "registry"),
                                 entity, "--key", keys.public_b64, "--region", region,
                                 "--industry", industry, "--quiet"),
                       check=True, capture_output=True, timeout=60)

    def start(self, name: str) -> str:
        """(Re)start site `name`; returns its URL."""
        s = self.sites[name]
        argv = self._cli("site", "serve", "--state", str(s["state"]), "--host", s["host"],
                         "--heartbeat", str(self.heartbeat), "--reconcile-interval",
                         str(self.reconcile_interval), "--tier-interval",
                         str(self.tier_interval))
        if not s["mover"]:
            argv.append("--no-mover")
        if self.key_cache is not None:
            argv += ["--key-cache", str(self.key_cache)]
        self.procs[name] = Proc(self._in(s["netns"], argv), self.root / f"{name}.log",
                                env=s.get("env"))
        s["url"] = self.procs[name].url
        return str(s["url"])

    def wait_trusted(self, entity: str, timeout: float = 20.0) -> None:
        """Wait until every running site accepts `entity`'s certificate (it learns a new
        entity's CA from the registry within one heartbeat). A site in a network
        namespace is asked from inside it (the test's own namespace cannot reach it)."""
        first = next(s for s in self.sites.values() if s["entity"] == entity)
        keys_dir = str(first["state"] / "federation")
        for name, s in self.sites.items():
            if name not in self.procs or s["entity"] == entity:
                continue
            url = str(s["url"])
            if s["netns"] is None:
                ok = accepted(url, keys_dir, name, timeout)
            else:
                probe = ("import sys; from gfs.federation.testing import accepted; "
                         "sys.exit(0 if accepted(*sys.argv[1:4], float(sys.argv[4])) else 1)")
                argv = self._in(s["netns"], [sys.executable, "-c", probe, url, keys_dir, name,
                                             str(timeout)])
                ok = subprocess.run(argv, capture_output=True, timeout=timeout + 30,
                                    check=False).returncode == 0
            if not ok:
                raise TimeoutError(f"site {name} does not accept {entity}'s certificate "
                                   f"after {timeout} s")

    def http(self, site: str, *, keys: EntityKeys | None = None, token: str | None = None,
             timeout: float = 30.0) -> HttpClient:
        """An HTTP client to site `site`: as `keys`' entity (its certificate), or as a
        user (a token, or nobody) trusting the registry's CA."""
        return HttpClient(str(self.sites[site]["url"]), keys=keys, token=token,
                          timeout=timeout, tls=trust_for(keys) if keys else self.trust,
                          site=site)

    def metrics(self, site: str, timeout: float = 30.0) -> bytes:
        """Site `site`'s Prometheus metrics, read as its own entity (they need its
        authentication)."""
        h = self.http(site, keys=self.keys(str(self.sites[site]["entity"])), timeout=timeout)
        try:
            return bytes(h.call("GET", "/metrics"))
        finally:
            h.close()

    def metric(self, site: str, name: str) -> float:
        """The sum of site `site`'s `/metrics` samples named hutong_site_`name`*."""
        text = self.metrics(site).decode()
        return sum(float(line.rsplit(" ", 1)[-1]) for line in text.splitlines()
                   if line.startswith(f"hutong_site_{name}"))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop site `name` (kill -9 by default)."""
        self.procs.pop(name).stop(sig)

    def keys(self, entity: str) -> EntityKeys:
        s = next(s for s in self.sites.values() if s["entity"] == entity)
        return EntityKeys.load(s["state"] / "federation")

    def client(self, entity: str | None = None, *, token: str | None = None,
               near: str | None = None) -> FederationClient:
        """A federation client as `entity` (its keys) or with `token`."""
        return FederationClient(self.registry_url, keys=self.keys(entity) if entity else None,
                                token=token, near=near, tls=None if entity else self.trust)

    def wait_status(self, name: str, status: str, timeout: float = 20.0) -> None:
        """Wait until the registry reports site `name` as `status` (up/down)."""
        fc = FederationClient(self.registry_url, timeout=5, tls=self.trust)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if fc.sites(refresh=True).get(name, {}).get("status") == status:
                    return
                time.sleep(0.2)
        finally:
            fc.close()
        raise TimeoutError(f"site {name} not {status} after {timeout} s")

    def close(self) -> None:
        for p in self.procs.values():
            p.stop()
        self.procs.clear()
        if self.registry_proc is not None:
            self.registry_proc.stop()
            self.registry_proc = None

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class SiteDef:
    """A site for `started`: name, entity, region, whether it is the entity's primary."""

    name: str
    entity: str
    region: str
    primary: bool = False
    industry: str = "GEN"


TWO_ENTITIES = (SiteDef("a1", "bank-a", "cn-west", True), SiteDef("t1", "telco-b", "cn-east", True))
"""bank-a's primary a1 and telco-b's primary t1: the usual two-entity federation."""


def started(root: Path, sites: Sequence[SiteDef], **kw: Any) -> Federation:
    """A federation under `root` with its registry and `sites` running (`kw` as for
    `Federation`); stopped again if any of them fails to start. Use it in a `with`."""
    fed = Federation(root, **kw)
    try:
        fed.registry()
        for s in sites:
            fed.site(s.name, s.entity, s.region, primary=s.primary, industry=s.industry)
    except BaseException:
        fed.close()
        raise
    return fed


def populate(fed: Federation, entity: str, files: Mapping[str, bytes], *,
             dirs: Sequence[str] = (), grants: Sequence[tuple[str, str, str]] = ()) -> None:
    """As `entity`: make `dirs` and each file's directory, write `files`, then grant
    each (glob, grantee entity, "read" or "write") of `grants`."""
    with fed.client(entity) as fc:
        parents = [p.rsplit("/", 1)[0] for p in files]
        for d in dict.fromkeys([*dirs, *parents]):
            if d.count("/") > 1:
                fc.mkdir(d, parents=True, exist_ok=True)
        for path, data in files.items():
            fc.write_bytes(path, data)
        for glob, grantee, mode in grants:
            fc.grant(glob, grantee, mode)


def accepted(url: str, keys_dir: str, site: str, timeout: float) -> bool:
    """Whether site `site` at `url` answers a request signed with the keys in `keys_dir`
    (over mutual TLS) within `timeout` seconds, asking every 0.1 s."""
    keys = EntityKeys.load(keys_dir)
    mine = trust_for(keys)
    assert mine is not None
    deadline = time.monotonic() + timeout
    while True:
        h = HttpClient(url, keys=keys, tls=mine, site=site)
        try:
            h.call("GET", "/v1/status")
            return True
        except HutongError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        finally:
            h.close()


def lone_site(state: Path, *, name: str = "s1", entity: str = "bank-a",
              region: str = "cn-west", primary: bool = True, meta: str | None = None
              ) -> Site:
    """A site daemon's state made at `state` (its namespace in `meta`, a PostgreSQL
    URL, if given) and opened in-process, for tests that call its methods or serve its
    app themselves; its registry (port 9) is never asked."""
    init_site(state, name=name, entity=entity, region=region,
              registry="http://127.0.0.1:9", primary=primary, meta=meta)
    return Site(state)
