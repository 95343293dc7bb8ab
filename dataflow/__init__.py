"""dataflow: place data and compute across sites (docs/dataflow.md).

With the sites, files and task functions of docs/dataflow.md ("Operations"):

>>> from dataflow import Dataflow
>>> df = Dataflow.open("sites.toml", progress=False)    # embedded: one store per site
>>> plan = df.plan("/bank-a/loans/**")                  # where to run, what to move
>>> plan.strategy
'move data to a'
>>> job = df.run(score, "/bank-a/loans/**", output="/bank-a/out/rows")
>>> sorted(job.result.outputs.values())
['/bank-a/out/rows/t0000', '/bank-a/out/rows/t0001', '/bank-a/out/rows/t0002']
>>> df.close()

In a federation, `FederatedDataflow(registry_url, keys_dir=...)` does the same
through the sites' HTTP APIs.
"""

from typing import TYPE_CHECKING

from gfs._lazy import lazy_exports

if TYPE_CHECKING:
    from dataflow.catalog import Catalog, EmbeddedCatalog
    from dataflow.cost import Constraints, CostModel, Estimate, Task, tasks_of
    from dataflow.datasets import Dataset, FileEntry, Stores
    from dataflow.errors import (
        ConfigError,
        DataflowError,
        DatasetError,
        JobFailedError,
        PlanError,
        SiteLostError,
        UnknownSiteError,
    )
    from dataflow.executor import (
        EmbeddedDriver,
        Executor,
        InputFile,
        JobResult,
        Runtime,
        SiteDriver,
    )
    from dataflow.federated import (
        FederatedCatalog,
        FederatedDataflow,
        FederatedDriver,
        FederatedRuntime,
        RemoteInputFile,
    )
    from dataflow.federated_ops import Migration, MigrationIncompleteError
    from dataflow.ops import Dataflow, Job, Subscription
    from dataflow.planner import Plan, Planner
    from dataflow.records import Attempt, JobRecord, TaskRecord, TransferRecord
    from dataflow.sites import Link, Site, Topology, probe_link, refresh_links

__all__ = [
    "Attempt",
    "Catalog",
    "ConfigError",
    "Constraints",
    "CostModel",
    "Dataflow",
    "DataflowError",
    "Dataset",
    "DatasetError",
    "EmbeddedCatalog",
    "EmbeddedDriver",
    "Estimate",
    "Executor",
    "FederatedCatalog",
    "FederatedDataflow",
    "FederatedDriver",
    "FederatedRuntime",
    "FileEntry",
    "InputFile",
    "Job",
    "JobFailedError",
    "JobRecord",
    "JobResult",
    "Link",
    "Migration",
    "MigrationIncompleteError",
    "Plan",
    "PlanError",
    "Planner",
    "RemoteInputFile",
    "Runtime",
    "Site",
    "SiteDriver",
    "SiteLostError",
    "Stores",
    "Subscription",
    "Task",
    "TaskRecord",
    "Topology",
    "TransferRecord",
    "UnknownSiteError",
    "probe_link",
    "refresh_links",
    "tasks_of",
]

__getattr__ = lazy_exports(__name__, {
    "SiteDriver": "dataflow.executor",
    "EmbeddedDriver": "dataflow.executor",
    "TransferRecord": "dataflow.records",
    "TaskRecord": "dataflow.records",
    "JobRecord": "dataflow.records",
    "Attempt": "dataflow.records",
    "Catalog": "dataflow.catalog",
    "ConfigError": "dataflow.errors",
    "Constraints": "dataflow.cost",
    "CostModel": "dataflow.cost",
    "Dataflow": "dataflow.ops",
    "DataflowError": "dataflow.errors",
    "Dataset": "dataflow.datasets",
    "DatasetError": "dataflow.errors",
    "EmbeddedCatalog": "dataflow.catalog",
    "Estimate": "dataflow.cost",
    "Executor": "dataflow.executor",
    "FederatedCatalog": "dataflow.federated",
    "FederatedDataflow": "dataflow.federated",
    "FederatedDriver": "dataflow.federated",
    "Migration": "dataflow.federated_ops",
    "FederatedRuntime": "dataflow.federated",
    "FileEntry": "dataflow.datasets",
    "InputFile": "dataflow.executor",
    "Job": "dataflow.ops",
    "JobFailedError": "dataflow.errors",
    "JobResult": "dataflow.executor",
    "Link": "dataflow.sites",
    "MigrationIncompleteError": "dataflow.federated_ops",
    "Plan": "dataflow.planner",
    "PlanError": "dataflow.errors",
    "Planner": "dataflow.planner",
    "RemoteInputFile": "dataflow.federated",
    "Runtime": "dataflow.executor",
    "Site": "dataflow.sites",
    "SiteLostError": "dataflow.errors",
    "Stores": "dataflow.datasets",
    "Subscription": "dataflow.ops",
    "Task": "dataflow.cost",
    "Topology": "dataflow.sites",
    "UnknownSiteError": "dataflow.errors",
    "probe_link": "dataflow.sites",
    "refresh_links": "dataflow.sites",
    "tasks_of": "dataflow.cost",
})
