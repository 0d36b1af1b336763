"""OpenLineage events built with the real openlineage-python client, and that client's HTTP
transport pointed at a Pipewarden HTTP port."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    error_message_run,
    output_statistics_output_dataset,
    ownership_job,
    parent_run,
)
from openlineage.client.transport.http import HttpCompression, HttpConfig, HttpTransport

from tests.support.helpers import T0

PRODUCER = "https://github.com/example/pipewarden-tests"


def lineage_client(port: int, *, gzip: bool = False) -> OpenLineageClient:
    """The real client with its HTTP transport aimed at 127.0.0.1:`port` (no retries, so a
    refusal shows at once)."""
    config = HttpConfig(
        url=f"http://127.0.0.1:{port}",
        compression=HttpCompression.GZIP if gzip else None,
        retry={"total": 0, "connect": 0, "read": 0},
        timeout=10.0,
    )
    return OpenLineageClient(transport=HttpTransport(config))


def at(seconds: float) -> str:
    """An eventTime `seconds` after T0."""
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def event(
    state: str,
    run_id: str,
    name: str,
    *,
    namespace: str = "airflow",
    t: float = 0.0,
    team: str | None = None,
    inputs: tuple[str, ...] = (),
    outputs: dict[str, int | None] | None = None,
    error: str | None = None,
    parent: tuple[str, str, str] | None = None,
) -> RunEvent:
    """A RunEvent of job `namespace`/`name`; outputs map dataset name to rowCount (datasets
    live in namespace "warehouse"); parent is (run id, namespace, name)."""
    job_facets: dict[str, Any] = {}
    if team is not None:
        job_facets["ownership"] = ownership_job.OwnershipJobFacet(
            owners=[
                ownership_job.Owner(name="user:someone"),
                ownership_job.Owner(name=f"team:{team}"),
            ]
        )
    run_facets: dict[str, Any] = {}
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error, programmingLanguage="PYTHON"
        )
    if parent is not None:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent[0]),
            job=parent_run.Job(namespace=parent[1], name=parent[2]),
        )
    outs = []
    for dataset, rows in (outputs or {}).items():
        facets: dict[str, Any] = {}
        if rows is not None:
            facets["outputStatistics"] = (
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)
            )
        outs.append(OutputDataset(namespace="warehouse", name=dataset, outputFacets=facets))
    return RunEvent(
        eventType=RunState[state],
        eventTime=at(t),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(namespace=namespace, name=name, facets=job_facets),
        inputs=[InputDataset(namespace="warehouse", name=d) for d in inputs],
        outputs=outs,
        producer=PRODUCER,
    )
