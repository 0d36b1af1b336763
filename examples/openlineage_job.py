"""A job that speaks OpenLineage (as Airflow, Spark, dbt and Flink do) reporting to Pipewarden.

    pip install openlineage-python
    python examples/openlineage_job.py [http://HOST:HTTP_PORT]

The real openlineage-python client's HTTP transport posts START and COMPLETE events to
Pipewarden's /api/v1/lineage. Pipewarden counts the run for pipeline `example/daily_orders`,
of team `analytics` (the ownership facet), with the duration between the two events, the
outputs' row counts as records, and the producers of its inputs as upstream pipelines.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import output_statistics_output_dataset, ownership_job
from openlineage.client.transport.http import HttpConfig, HttpTransport


def now() -> str:
    return datetime.now(UTC).isoformat()


def main(url: str) -> None:
    client = OpenLineageClient(transport=HttpTransport(HttpConfig(url=url)))
    run = Run(runId=str(uuid.uuid4()))
    job = Job(
        namespace="example",
        name="daily_orders",
        facets={
            "ownership": ownership_job.OwnershipJobFacet(
                owners=[ownership_job.Owner(name="team:analytics")]
            )
        },
    )
    inputs = [InputDataset(namespace="postgres://db", name="public.orders")]
    producer = "https://example.invalid/pipewarden-example"
    client.emit(
        RunEvent(
            eventType=RunState.START,
            eventTime=now(),
            run=run,
            job=job,
            inputs=inputs,
            producer=producer,
        )
    )
    time.sleep(0.2)  # the job's work
    stats = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=1234)
    client.emit(
        RunEvent(
            eventType=RunState.COMPLETE,
            eventTime=now(),
            run=run,
            job=job,
            inputs=inputs,
            outputs=[
                OutputDataset(
                    namespace="s3://warehouse",
                    name="daily_orders",
                    outputFacets={"outputStatistics": stats},
                )
            ],
            producer=producer,
        )
    )
    print(f"reported run {run.runId} of example/daily_orders")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9095")
