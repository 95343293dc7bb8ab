"""Privacy jobs at a site: the routes `hutong site serve` adds (gfs.federation.site
EXTENSIONS) so that each party's half runs next to its entity's data.

    POST /v1/privacy/jobs        a user of this site's entity starts a job; the site
                                 asks the partner entity's primary to take its side,
                                 then runs its own half, which connects to it
    POST /v1/privacy/peer-jobs   the partner entity's site asks this site to take its
                                 side: the policy is checked, a half is started that
                                 listens on this site's address (mutual TLS)
    GET  /v1/privacy/jobs/{id}   state, progress and (for this entity) the result; the
                                 partner entity's site reads the state only (its
                                 listening half asks whether ours still exists)

Each half is a process (`python -m privacy.party --site`) on the site's own state,
keys and certificate; its result stays at its site, readable by its entity's users.
docs/privacy.md "Parties at their sites" has the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from gfs.federation.auth import AuthError
from gfs.federation.http import (
    MAX_JSON,
    ApiError,
    BadRequestError,
    HttpClient,
    read_body,
    read_json,
)
from gfs.federation.site_handlers import SITE_KEY
from gfs.federation.site_state import NotPrimaryError, Principal, Site
from gfs.federation.tls import trust_for
from privacy.errors import PolicyError, PrivacyError
from privacy.process_group import end_group

if TYPE_CHECKING:
    from privacy.jobs import JobSpec

# The job machinery (pyarrow, TenSEAL) is imported by the first request that needs
# it, in a worker thread, so that it adds nothing to a site's start-up.

JobState = Literal["running", "done", "failed"]
KEEP_JOBS = 256
"""Finished jobs a site remembers (oldest forgotten first)."""
LISTEN_TIMEOUT = 30.0
"""Seconds a site waits for its listening half to report its port."""


@dataclass
class SiteJob:
    """One half of a job run at this site."""

    id: str
    side: str
    partner: str
    initiator: bool
    state: JobState = "running"
    progress: dict[str, list[int]] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


class SiteJobs:
    """The halves this site runs: their processes and records."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.jobs: OrderedDict[str, SiteJob] = OrderedDict()
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.workdir = site.state / "privacy" / "jobs"

    def reserve(self, spec: JobSpec, side: str, partner: str) -> SiteJob:
        """Record the initiating half before the partner is asked: the partner's
        listening half checks it while it waits (privacy.transport.initiator_watch)."""
        if spec.job_id in self.jobs:
            raise ApiError(f"job {spec.job_id} already runs here", 409, "conflict")
        job = SiteJob(spec.job_id, side, partner, True)
        self.jobs[job.id] = job
        return job

    def fail(self, job: SiteJob, e: BaseException) -> None:
        """A reserved half that never started."""
        job.state, job.finished = "failed", time.time()
        job.error = {"kind": type(e).__name__, "message": str(e)}

    async def start(self, spec: JobSpec, side: str, partner: str, initiator: bool,
                    args: list[str]) -> tuple[SiteJob, asyncio.subprocess.Process]:
        """Start this site's half of `spec` (`args`: how it meets its partner)."""
        reserved = self.jobs.get(spec.job_id)
        if reserved is not None and (not initiator or spec.job_id in self.procs
                                     or reserved.state != "running"):
            raise ApiError(f"job {spec.job_id} already runs here", 409, "conflict")
        self.workdir.mkdir(parents=True, exist_ok=True)
        result = self.workdir / f"{spec.job_id}.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "privacy.party", "--site", "--side", side,
            "--state", str(self.site.state), "--spec", json.dumps(asdict(spec)),
            "--result", str(result), *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        job = reserved or SiteJob(spec.job_id, side, partner, initiator)
        self.jobs[job.id] = job
        self.procs[job.id] = proc
        while len(self.jobs) > KEEP_JOBS:
            old = next(iter(self.jobs))
            if self.jobs[old].state == "running":
                break
            self.jobs.pop(old)
        task = asyncio.get_running_loop().create_task(self._follow(job, proc, result))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return job, proc

    async def _follow(self, job: SiteJob, proc: asyncio.subprocess.Process,
                      result: Path) -> None:
        assert proc.stderr is not None
        last: list[str] = []
        try:
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("PROGRESS "):
                    parts = line.split(" ")
                    if len(parts) == 4:
                        job.progress[parts[1]] = [int(parts[2]), int(parts[3])]
                elif line:
                    last.append(line)
                    del last[:-20]
            await proc.wait()
        finally:  # its worker processes must not outlive it
            await asyncio.get_running_loop().run_in_executor(None, end_group, proc.pid)
            self.procs.pop(job.id, None)
            job.finished = time.time()
        if proc.returncode == 0 and result.exists():
            job.result = json.loads(result.read_text())
            job.state = "done"
        else:
            errs = [ln for ln in last if ln.startswith("ERROR ")]
            kind, _, msg = (errs[-1][6:] if errs else "").partition(" ")
            job.error = {"kind": kind or "ProtocolError",
                         "message": msg or f"the party exited with code {proc.returncode} "
                                           f"before finishing; nothing was released"}
            job.state = "failed"
        with contextlib.suppress(FileNotFoundError):
            result.unlink()

    async def close(self) -> None:
        """Stop every running half (the daemon is stopping)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, end_group, proc.pid)
                               for proc in list(self.procs.values())))
        for t in list(self.tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, 10)




JOBS_KEY: web.AppKey[SiteJobs] = web.AppKey("privacy_jobs", SiteJobs)


async def _caller(request: web.Request) -> tuple[Site, Principal, dict[str, Any]]:
    site = request.app[SITE_KEY]
    p = await asyncio.get_running_loop().run_in_executor(
        None, site.principal, request.headers, request.method, request.path_qs)
    return site, p, await read_json(request, signed=p.token is None)


def _parse_spec(data: dict[str, Any]) -> JobSpec:
    from privacy.jobs import JobSpec

    try:
        return JobSpec.from_wire(data.get("spec"))
    except PrivacyError as e:
        raise BadRequestError(str(e)) from None


async def _spec(data: dict[str, Any]) -> JobSpec:
    """The request's job spec, checked (privacy.jobs imported off the event loop)."""
    return await asyncio.get_running_loop().run_in_executor(None, _parse_spec, data)


def party_entity(spec: JobSpec, side: str) -> str:
    """privacy.jobs.party_entity (loaded by `_spec` before any caller)."""
    from privacy.jobs import party_entity as entity

    return entity(spec, side)


def _side_of(spec: JobSpec, entity: str) -> str:
    sides = [s for s in ("left", "right") if party_entity(spec, s) == entity]
    if not sides:
        raise AuthError(f"entity {entity!r} is neither party of this job", 403, "forbidden")
    return sides[0]


def _table(spec: JobSpec, side: str) -> str | None:
    if spec.kind == "query" and side == "right":
        return None
    return spec.left if side == "left" else spec.right


def _require_primary(site: Site) -> None:
    if not site.config.primary:
        raise NotPrimaryError(f"site {site.name} is not the primary of {site.entity}; "
                              "privacy jobs run at the entity's primary", 421, "not_primary")


def _partner_site(site: Site, partner: str) -> tuple[str, str]:
    """(name, endpoint) of `partner`'s primary site, as the registry lists it."""
    sites = site.registry.call("GET", "/v1/sites")["sites"]
    for s in sites:
        if s["entity"] == partner and s.get("primary"):
            if s.get("status") != "up":
                raise ApiError(f"the primary site {s['name']} of {partner} is down; retry "
                               f"when it is up", 503, "partner_down")
            return str(s["name"]), str(s["endpoint"])
    raise ApiError(f"entity {partner!r} has no primary site registered", 404, "not_found")


def _ask_partner(site: Site, name: str, endpoint: str, spec: JobSpec) -> dict[str, Any]:
    h = HttpClient(endpoint, keys=site.keys, tls=trust_for(site.keys), site=name,
                   timeout=LISTEN_TIMEOUT + 15)
    try:
        return dict(h.call("POST", "/v1/privacy/peer-jobs", {"spec": asdict(spec)}))
    finally:
        h.close()


async def start_job(request: web.Request) -> web.Response:
    """A user of this site's entity starts a job with a partner entity."""
    site, p, data = await _caller(request)
    if p.entity != site.entity:
        raise AuthError(f"only users of {site.entity} start its jobs here", 403, "forbidden")
    spec = await _spec(data)
    side = _side_of(spec, site.entity)
    table = _table(spec, side)
    if spec.kind == "query" and side == "left":
        raise BadRequestError("a query is started by the asking entity, at its own site")
    if table is not None and p.token is not None and not p.token.allows(table, False):
        raise AuthError(f"token of {p.token.sub!r} may not read {table}", 403, "forbidden")
    _require_primary(site)
    partner = party_entity(spec, "right" if side == "left" else "left")
    loop = asyncio.get_running_loop()
    jobs = request.app[JOBS_KEY]
    reserved = jobs.reserve(spec, side, partner)
    try:
        name, endpoint = await loop.run_in_executor(None, _partner_site, site, partner)
        answer = await loop.run_in_executor(None, _ask_partner, site, name, endpoint, spec)
    except BaseException as e:
        jobs.fail(reserved, e)
        raise
    job, _ = await jobs.start(
        spec, side, partner, True,
        ["--connect", f"{answer['host']}:{int(answer['port'])}", "--peer-site", name])
    return web.json_response({"job": job.id, "side": side, "partner": partner,
                              "partner_site": name}, status=202)


def _check_policy(site: Site, partner: str, table: str, key: str | None) -> None:
    from privacy.policy import Policy

    Policy.load(site.client, site.entity).check_partner(partner, table, key)


async def peer_job(request: web.Request) -> web.Response:
    """The partner entity's site asks this site to run its side of a job."""
    site, p, data = await _caller(request)
    if p.token is not None:
        raise AuthError("only a partner entity's site (a signed request) starts a job's "
                        "other half", 403, "forbidden")
    spec = await _spec(data)
    side = _side_of(spec, site.entity)
    other = "right" if side == "left" else "left"
    if party_entity(spec, other) != p.entity:
        raise AuthError(f"{p.entity!r} is not the other party of this job", 403, "forbidden")
    _require_primary(site)
    table = _table(spec, side)
    if table is not None:
        if party_entity(spec, side) != site.entity:
            raise AuthError(f"{table} is not a table of {site.entity}", 403, "forbidden")
        key = None if spec.kind == "query" else spec.keys()[0 if side == "left" else 1]
        try:  # refused here, before a process starts (the half checks again)
            await asyncio.get_running_loop().run_in_executor(
                None, _check_policy, site, p.entity, table, key)
        except PolicyError as e:
            raise AuthError(str(e), 403, "policy") from None
    host = urllib.parse.urlsplit(site.endpoint).hostname or "127.0.0.1"
    name, endpoint = await asyncio.get_running_loop().run_in_executor(
        None, _partner_site, site, p.entity)  # the initiator: its half is watched
    job, proc = await request.app[JOBS_KEY].start(
        spec, side, p.entity, False,
        ["--listen", host, "--peer-site", name, "--peer-endpoint", endpoint])
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), LISTEN_TIMEOUT)).decode()
    except TimeoutError:
        line = ""
    if not line.startswith("LISTEN "):
        await asyncio.get_running_loop().run_in_executor(None, end_group, proc.pid)
        raise ApiError(f"site {site.name} could not start its half of job {job.id}", 500,
                       "party_failed")
    return web.json_response({"job": job.id, "host": host, "port": int(line.split()[1]),
                              "site": site.name})


async def job_status(request: web.Request) -> web.Response:
    """State, progress and result of this site's half of a job."""
    site = request.app[SITE_KEY]
    p = await asyncio.get_running_loop().run_in_executor(
        None, site.principal, request.headers, request.method, request.path_qs)
    await read_body(request, MAX_JSON, signed=p.token is None)
    job = request.app[JOBS_KEY].jobs.get(request.match_info["id"])
    partner = p.token is None and job is not None and job.partner == p.entity
    if p.entity != site.entity and not partner:
        raise AuthError(f"only {site.entity} reads its jobs", 403, "forbidden")
    if job is None:
        raise ApiError(f"no job {request.match_info['id']} at site {site.name}", 404,
                       "not_found")
    if p.entity != site.entity:  # the partner's site: whether this half still runs
        return web.json_response({"id": job.id, "state": job.state})
    return web.json_response(job.to_wire())


def install(app: web.Application, site: Site) -> None:
    """Add the privacy routes to a site's application."""
    jobs = SiteJobs(site)
    app[JOBS_KEY] = jobs

    async def cleanup(_app: web.Application) -> None:
        await jobs.close()
    app.on_cleanup.append(cleanup)
    app.router.add_post("/v1/privacy/jobs", start_job)
    app.router.add_post("/v1/privacy/peer-jobs", peer_job)
    app.router.add_get("/v1/privacy/jobs/{id:[0-9a-f]{32}}", job_status)
