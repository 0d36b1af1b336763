"""A no-op StreamIngest server: the ceiling that Pipewarden's ingestion is compared with.

It pays what any Python gRPC ingestion service must pay and nothing more: receive each request,
decode it, read every field of every execution once, and answer IngestResponse(accepted=n).
Pipewarden's throughput divided by this one's, measured side by side, says how much of the
transport's ceiling the server's own work leaves.

Run as `python -m bench.sink --listen 127.0.0.1:PORT`; it also serves grpc.health.v1 so the
harness can wait for it as it waits for Pipewarden.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipewarden.v1 import service_pb2

__all__ = ["METHOD", "SERVICE", "main", "read_every_field"]

SERVICE = "pipewarden.v1.PipelineMonitor"
METHOD = f"/{SERVICE}/StreamIngest"
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # as Pipewarden's default limit


def read_every_field(request: service_pb2.IngestRequest) -> int:
    """Touch every field of every execution once, as any real consumer must; return the count."""
    n = 0
    for e in request.executions:
        started, finished, duration = e.started_at, e.finished_at, e.duration
        _ = (
            e.execution_id, e.pipeline_id, e.team, e.status,
            started.seconds, started.nanos, finished.seconds, finished.nanos,
            duration.seconds, duration.nanos, e.records_processed,
            list(e.upstream_pipeline_ids), list(e.labels.items()), e.error_message,
        )  # fmt: skip
        n += 1
    return n


async def stream_ingest(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """Answer each request with the number of executions it carried."""
    async for raw in requests:
        n = read_every_field(service_pb2.IngestRequest.FromString(raw))
        yield service_pb2.IngestResponse(accepted=n).SerializeToString()


async def serve(listen: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {"StreamIngest": grpc.stream_stream_rpc_method_handler(stream_ingest, None, None)},
    )
    server.add_generic_rpc_handlers((handler,))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(listen)
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
