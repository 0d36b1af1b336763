"""A realistic, seeded fleet of data pipelines, and a sender that streams it to a server.

Generation is pure: `build_fleet` draws each pipeline's nature from the seed, `generate` turns
the fleet into the execution events of the last `days` in event-time order, and `batches` cuts
them into requests. Only `run` does I/O: it streams the requests over one `StreamIngest` call.

Each run's randomness comes from the seed, the pipeline and the run's schedule slot alone, so
two simulations of the same fleet ending at different times agree on the runs they share: their
execution ids repeat and a server counts them as duplicates, as it would for a runner that
resends. Injected faults sit at the end of the simulated history, where detectors look.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final, NamedTuple, TypeAlias, TypeVar

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from pipewarden.v1 import execution_pb2, service_pb2, service_pb2_grpc

__all__ = [
    "FAULT_KINDS",
    "TEAM_NAMES",
    "FleetSpec",
    "PipelineProfile",
    "SimulationResult",
    "batches",
    "build_fleet",
    "count_events",
    "fault_start",
    "generate",
    "run",
]

TEAM_NAMES: Final = (
    "payments", "growth", "search", "ads", "risk", "logistics", "identity", "analytics",
)  # fmt: skip
"""The names of the first teams; later ones are called "team-9", "team-10" and so on."""

FAULT_KINDS: Final = ("failures", "slowdown", "volume_drop", "stale")
"""The faults `build_fleet` injects, in the order it hands them out."""

_SUCCEEDED: Final = execution_pb2.EXECUTION_STATUS_SUCCEEDED
_FAILED: Final = execution_pb2.EXECUTION_STATUS_FAILED
_RUNNING: Final = execution_pb2.EXECUTION_STATUS_RUNNING
_CANCELLED: Final = execution_pb2.EXECUTION_STATUS_CANCELLED

_DAY: Final = 86_400
_NS: Final = 1_000_000_000
# (seconds, name suffix, weight): mostly hourly and daily, some every 15 minutes.
_CADENCES: Final = (
    (900, "15m", 0.12), (3_600, "hourly", 0.38), (14_400, "4h", 0.08),
    (21_600, "6h", 0.10), (43_200, "12h", 0.05), (86_400, "daily", 0.27),
)  # fmt: skip
_ENGINES_BY_CADENCE: Final = {
    900: (("flink", 0.5), ("spark", 0.5)),
    3_600: (("airflow", 0.4), ("spark", 0.35), ("dbt", 0.25)),
}
_ENGINES_SLOW: Final = (("airflow", 0.35), ("spark", 0.3), ("dbt", 0.35))
_TIERS: Final = (("gold", 0.2), ("silver", 0.4), ("bronze", 0.4))
_CANCEL_RATE: Final = 0.002
_MIN_DURATION: Final = 5.0
_MAX_DURATION: Final = 5 * 3_600.0
_DIURNAL: Final = 0.2  # records swing +-20% over the day for intra-day pipelines
_NOISE_SIGMAS: Final = 3.0  # runs are assumed to stay within 3 sigma when placing faults

_VOCABULARY: Final = {
    "payments": ("settlement", "ledger", "refunds", "chargebacks", "payouts", "fx_rates",
                 "invoices", "card_auth", "disputes", "fees", "reconciliation"),
    "growth": ("signups", "referrals", "campaigns", "attribution", "funnels", "experiments",
               "retention", "cohorts", "push_sends", "email_sends"),
    "search": ("query_logs", "index_build", "ranking_features", "click_through", "synonyms",
               "spellcheck", "autocomplete", "embeddings"),
    "ads": ("impressions", "clicks", "bids", "budgets", "conversions", "pacing", "ctr_model",
            "advertisers"),
    "risk": ("fraud_scores", "kyc_checks", "velocity", "device_graph", "sanctions",
             "chargeback_model", "rules_eval"),
    "logistics": ("shipments", "carriers", "eta_model", "warehouses", "returns", "inventory",
                  "routes"),
    "identity": ("accounts", "sessions", "logins", "mfa_events", "profiles", "permissions"),
    "analytics": ("daily_active_users", "revenue", "sessions_rollup", "events_raw",
                  "dashboards", "kpis"),
}  # fmt: skip
_GENERIC_NOUNS: Final = (
    "events", "snapshots", "exports", "dim_users", "fact_orders", "audit_log", "metrics",
    "features", "sessions", "orders", "catalog", "clickstream",
)  # fmt: skip
_STAGES: Final = ("raw", "clean", "agg", "export", "backfill", "enriched", "v2")

_ERRORS: Final = {
    "spark": (
        "java.lang.OutOfMemoryError: Java heap space",
        "Job aborted due to stage failure: Task {n} in stage {m}.0 failed 4 times",
        "org.apache.spark.shuffle.FetchFailedException: Failed to connect to executor {n}",
        "AnalysisException: Path does not exist: s3://lake/{table}/dt={date}",
    ),
    "airflow": (
        "Task exited with return code 1",
        "airflow.exceptions.AirflowTaskTimeout: Timeout, PID: {pid}",
        "Sensor timed out waiting for s3://landing/{table}/_SUCCESS",
        "psycopg2.OperationalError: could not connect to server: Connection refused",
    ),
    "dbt": (
        'Database Error in model {table}: relation "staging.{table}" does not exist',
        "Compilation Error in model {table}: 'ref' to a disabled node",
        "Failure in test not_null_{table}_id: got {n} results, configured to fail if != 0",
    ),
    "flink": (
        "org.apache.flink.runtime.JobException: Recovery is suppressed by "
        "NoRestartBackoffTimeStrategy",
        "Checkpoint {n} expired before completing",
        "org.apache.kafka.common.errors.TimeoutException: Topic {table} not present in metadata",
    ),
}


@dataclass(frozen=True)
class FleetSpec:
    """What fleet to simulate: how many teams and pipelines, over how long, with which faults."""

    teams: int = 8
    """Number of teams: "payments", "growth", "search", ... then "team-9", "team-10" ..."""
    pipelines: int = 200
    """Total number of pipelines, spread unevenly over the teams."""
    days: float = 3.0
    """Length of the simulated history, in days, ending at the `end` given to `generate`."""
    seed: int = 1
    """Seed of every random choice; the same seed gives the same fleet and the same runs."""
    faults: float = 0.0
    """Fraction of the pipelines (0 to 1) that get an injected fault; any positive value
    injects at least one."""
    running_events: bool = True
    """Whether each run also sends a RUNNING event when it starts, before its terminal one."""

    def __post_init__(self) -> None:
        if self.teams < 1:
            raise ValueError(f"teams must be at least 1, not {self.teams}")
        if self.pipelines < 0:
            raise ValueError(f"pipelines must not be negative, not {self.pipelines}")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError(f"days must be a positive number, not {self.days}")
        if not 0.0 <= self.faults <= 1.0:
            raise ValueError(f"faults must be a fraction from 0 to 1, not {self.faults}")


@dataclass(frozen=True)
class PipelineProfile:
    """The nature of one simulated pipeline: who owns it, how often and how long it runs."""

    pipeline_id: str
    """Readable id, "<team>.<dataset>_<schedule>", e.g. "payments.settlement_daily"."""
    team: str
    """The owning team."""
    cadence_seconds: float
    """Time between scheduled runs: 900 (every 15 minutes) to 86400 (daily)."""
    duration_seconds: float
    """Median duration of a successful run."""
    duration_noise: float
    """Standard deviation of the log of a run's duration around the median (lognormal)."""
    records: float
    """Median number of records a successful run processes."""
    failure_rate: float
    """Probability that a run fails."""
    upstream: tuple[str, ...]
    """Pipelines whose output this one consumes; all come before it in `build_fleet`'s list."""
    labels: Mapping[str, str]
    """Labels sent with every event: "tier" (gold, silver, bronze) and "engine" (airflow,
    spark, dbt, flink)."""
    fault: str | None
    """The injected fault, one of `FAULT_KINDS`, or None for a healthy pipeline."""
    fault_runs: int = 0
    """How many final runs the fault affects at least; for "stale", how many cadences before
    the end the pipeline stopped running."""
    fault_factor: float = 1.0
    """How much the fault scales its metric: durations for "slowdown" (3 to 10), records for
    "volume_drop" (0.1)."""
    offset_seconds: float = 0.0
    """Where in its cadence the schedule fires: runs are scheduled at
    `offset_seconds + k * cadence_seconds` seconds since the epoch."""


@dataclass(frozen=True)
class SimulationResult:
    """What the server answered to a simulation streamed by `run`."""

    sent: int
    """Events sent."""
    accepted: int
    """Terminal events the server newly counted."""
    duplicates: int
    """Terminal events the server had counted already."""
    running: int
    """RUNNING events the server recorded as in flight."""
    rejected: int
    """Events the server refused."""
    seconds: float
    """Wall-clock time from opening the stream to the last answer."""


_Status: TypeAlias = execution_pb2.ExecutionStatus.ValueType


class _Run(NamedTuple):
    scheduled: int  # Unix seconds of the schedule slot
    started_ns: int
    finished_ns: int
    status: _Status
    records: int
    error: str


_T = TypeVar("_T")


def _weighted(rng: random.Random, choices: Sequence[tuple[_T, float]]) -> _T:
    values = [value for value, _ in choices]
    weights = [weight for _, weight in choices]
    return rng.choices(values, weights)[0]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _team_name(index: int) -> str:
    return TEAM_NAMES[index] if index < len(TEAM_NAMES) else f"team-{index + 1}"


def _spread(total: int, teams: int, rng: random.Random) -> list[int]:
    """Split `total` pipelines unevenly over `teams`; each gets one when there are enough."""
    if total < teams:
        chosen = set(rng.sample(range(teams), total))
        return [1 if i in chosen else 0 for i in range(teams)]
    weights = [rng.lognormvariate(0.0, 0.8) for _ in range(teams)]
    extra = total - teams
    shares = [w / sum(weights) * extra for w in weights]
    counts = [1 + int(s) for s in shares]
    by_remainder = sorted(range(teams), key=lambda i: (int(shares[i]) - shares[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _names(team: str, rng: random.Random) -> Iterator[str]:
    """Endless distinct dataset names for one team."""
    nouns = list(_VOCABULARY.get(team, ()))
    rng.shuffle(nouns)
    generic = [n for n in _GENERIC_NOUNS if n not in nouns]
    rng.shuffle(generic)
    nouns += generic
    yield from nouns
    for stage in _STAGES:
        for noun in nouns:
            yield f"{noun}_{stage}"
    number = 2
    while True:
        for noun in nouns:
            yield f"{noun}_{number}"
        number += 1


def _profile(pipeline_id: str, team: str, cadence: int, rng: random.Random) -> PipelineProfile:
    engine = _weighted(rng, _ENGINES_BY_CADENCE.get(cadence, _ENGINES_SLOW))
    tier = _weighted(rng, _TIERS)
    duration = _log_uniform(rng, _MIN_DURATION, min(0.5 * cadence, _MAX_DURATION))
    # Bigger jobs tend to run longer: records follow the duration's place in the range, loosely.
    place = math.log(duration / _MIN_DURATION) / math.log(_MAX_DURATION / _MIN_DURATION)
    records = 10 ** (3.0 + 5.5 * (0.6 * place + 0.4 * rng.random()))
    failure_rate = _log_uniform(rng, 0.005, 0.05) * (0.6 if tier == "gold" else 1.0)
    return PipelineProfile(
        pipeline_id=pipeline_id,
        team=team,
        cadence_seconds=float(cadence),
        duration_seconds=duration,
        duration_noise=rng.uniform(0.05, 0.3),
        records=records,
        failure_rate=failure_rate,
        upstream=(),
        labels=MappingProxyType({"tier": tier, "engine": engine}),
        fault=None,
        offset_seconds=float(rng.randrange(cadence // 60) * 60),  # cron fires on the minute
    )


def _upstreams(
    profile: PipelineProfile,
    teammates: Sequence[PipelineProfile],
    everyone: Sequence[PipelineProfile],
    rng: random.Random,
) -> tuple[str, ...]:
    """Some of the pipelines listed before this one, mostly of its own team, or none.

    Picks by sampling, so building a large fleet stays linear in its size.
    """
    if not everyone or rng.random() >= 0.45:
        return ()
    chosen: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        pool = teammates if teammates and rng.random() < 0.7 else everyone
        for _ in range(8):
            pick = rng.choice(pool)
            # Consumers run no more often than what they read.
            if pick.cadence_seconds <= profile.cadence_seconds:
                if pick.pipeline_id not in chosen:
                    chosen.append(pick.pipeline_id)
                break
    return tuple(chosen)


def _jitter_max(cadence: float) -> float:
    """The longest scheduler delay between a run's slot and its start."""
    return min(45.0, 0.02 * cadence)


def _longest_run(profile: PipelineProfile, factor: float) -> float:
    """A bound (3 sigma) on how long after its slot a run scaled by `factor` finishes."""
    peak = math.sqrt(1.0 + _DIURNAL)
    noise = math.exp(_NOISE_SIGMAS * profile.duration_noise)
    return profile.duration_seconds * factor * noise * peak + _jitter_max(profile.cadence_seconds)


def fault_start(profile: PipelineProfile, end: float) -> float | None:
    """When the profile's fault begins for a history ending at `end`, or None without one.

    Runs scheduled from then on show the fault ("stale": no runs from then on). It lies early
    enough that at least `fault_runs` faulty runs finish before `end`; this is the ground truth
    of a labelled anomaly evaluation.
    """
    if profile.fault is None:
        return None
    return _onset(profile, profile.fault, profile.fault_runs, profile.fault_factor, end)


def _onset(profile: PipelineProfile, kind: str, runs: int, factor: float, end: float) -> float:
    span = runs * profile.cadence_seconds
    if kind == "stale":
        return end - span
    return end - span - _longest_run(profile, factor if kind == "slowdown" else 1.0)


def _pick(
    fleet: Sequence[PipelineProfile],
    free: list[int],
    kind: str,
    runs: int,
    factor: float,
    window: float,
) -> int:
    """The first free pipeline the fault leaves a baseline of healthy runs, else (in a short
    history) the one it leaves the most."""

    def onset(i: int) -> float:
        # In a window that starts at 0, the onset is also the healthy history before the fault.
        return _onset(fleet[i], kind, runs, factor, window)

    fitting = (i for i in free if onset(i) >= max(0.5 * window, 8 * fleet[i].cadence_seconds))
    first = next(fitting, None)
    return max(free, key=onset) if first is None else first


def _inject_faults(
    fleet: list[PipelineProfile], spec: FleetSpec, rng: random.Random
) -> list[PipelineProfile]:
    wanted = 0 if spec.faults == 0 else max(1, round(spec.faults * len(fleet)))
    free = list(range(len(fleet)))
    rng.shuffle(free)
    for n in range(min(wanted, len(fleet))):
        kind = FAULT_KINDS[n % len(FAULT_KINDS)]
        runs = rng.randint(4, 8) if kind == "stale" else rng.randint(3, 6)
        factor = {"slowdown": rng.uniform(3.0, 10.0), "volume_drop": 0.1}.get(kind, 1.0)
        index = _pick(fleet, free, kind, runs, factor, spec.days * _DAY)
        fleet[index] = replace(fleet[index], fault=kind, fault_runs=runs, fault_factor=factor)
        free.remove(index)
    return fleet


def build_fleet(spec: FleetSpec) -> list[PipelineProfile]:
    """The pipelines of the fleet `spec` describes, in dependency order.

    Every pipeline's upstreams come before it in the list, so the upstream graph is a DAG; edges
    run within and across teams. The result depends on `spec` alone, not on the time.
    """
    rng = random.Random(spec.seed)
    fleet: list[PipelineProfile] = []
    counts = _spread(spec.pipelines, spec.teams, rng)
    cadences = [(seconds, tag) for seconds, tag, _ in _CADENCES]
    cadence_weights = [weight for _, _, weight in _CADENCES]
    for index, count in enumerate(counts):
        team = _team_name(index)
        names = _names(team, rng)
        taken: set[str] = set()
        for _ in range(count):
            cadence, tag = rng.choices(cadences, cadence_weights)[0]
            # Names can meet ("events" + "_raw" and "events_raw"): skip those already used.
            while (pipeline_id := f"{team}.{next(names)}_{tag}") in taken:
                pass
            taken.add(pipeline_id)
            fleet.append(_profile(pipeline_id, team, cadence, rng))
    rng.shuffle(fleet)
    placed: list[PipelineProfile] = []
    by_team: dict[str, list[PipelineProfile]] = {}
    for profile in fleet:
        teammates = by_team.setdefault(profile.team, [])
        linked = replace(profile, upstream=_upstreams(profile, teammates, placed, rng))
        placed.append(linked)
        teammates.append(linked)
    return _inject_faults(placed, spec, rng)


def _error(engine: str, pipeline_id: str, scheduled: int, rng: random.Random) -> str:
    template = rng.choice(_ERRORS.get(engine, _ERRORS["airflow"]))
    return template.format(
        n=rng.randint(1, 400),
        m=rng.randint(1, 60),
        pid=rng.randint(1_000, 65_000),
        table=pipeline_id.partition(".")[2],
        date=time.strftime("%Y-%m-%d", time.gmtime(scheduled)),
    )


def _runs(profile: PipelineProfile, spec: FleetSpec, end: float) -> Iterator[_Run]:
    """The runs of one pipeline that started in the window, in schedule order."""
    cadence = round(profile.cadence_seconds)
    offset = round(profile.offset_seconds)
    start = fault_start(profile, end)
    stop = start if profile.fault == "stale" and start is not None else end
    engine = profile.labels.get("engine", "airflow")
    jitter = _jitter_max(cadence)
    end_ns = int(end * _NS)
    fault_error = ""
    if profile.fault == "failures" and start is not None:
        # One cause, repeated: a broken dependency fails every run the same way.
        fault_rng = random.Random(f"{spec.seed}:{profile.pipeline_id}:fault")
        fault_error = _error(engine, profile.pipeline_id, int(start), fault_rng)
    slot = math.ceil((end - spec.days * _DAY - offset) / cadence)
    while (scheduled := slot * cadence + offset) < stop:
        # Seeding by slot makes a run the same whatever window it falls in.
        rng = random.Random(f"{spec.seed}:{profile.pipeline_id}:{slot}")
        slot += 1
        started_ns = scheduled * _NS + int(rng.uniform(0.0, jitter) * _NS)
        if started_ns >= end_ns:
            break
        # Draw everything every time, so a fault changes its own metric and nothing else.
        outcome = rng.random()
        duration = profile.duration_seconds * math.exp(rng.gauss(0.0, profile.duration_noise))
        records = profile.records * math.exp(rng.gauss(0.0, profile.duration_noise / 2))
        partial = rng.uniform(0.05, 1.0)
        error_seed = rng.getrandbits(32)  # the message is written only for a failure
        if cadence < _DAY:
            load = 1.0 + _DIURNAL * math.sin(2 * math.pi * ((scheduled % _DAY) / _DAY - 0.25))
            records *= load
            duration *= math.sqrt(load)
        status: _Status = _SUCCEEDED
        error = ""
        if outcome < _CANCEL_RATE:
            status = _CANCELLED
        elif outcome < _CANCEL_RATE + profile.failure_rate:
            status = _FAILED
            error = _error(engine, profile.pipeline_id, scheduled, random.Random(error_seed))
        if start is not None and scheduled >= start:
            if profile.fault == "failures":
                status, error = _FAILED, fault_error
            elif profile.fault == "slowdown":
                duration *= profile.fault_factor
            elif profile.fault == "volume_drop":
                records *= profile.fault_factor
        if status != _SUCCEEDED:
            duration *= partial
            records *= partial
        yield _Run(
            scheduled=scheduled,
            started_ns=started_ns,
            finished_ns=started_ns + max(_NS, int(duration * _NS)),
            status=status,
            records=max(0 if status != _SUCCEEDED else 1, round(records)),
            error=error,
        )


class _Event(NamedTuple):
    time_ns: int
    terminal: bool
    run: _Run
    profile: PipelineProfile
    labels: dict[str, str]  # the profile's, as a dict: protobuf copies one fastest


def _events(profile: PipelineProfile, spec: FleetSpec, end: float) -> Iterator[_Event]:
    """One pipeline's events in time order; slow runs may overlap, so a small heap sorts them."""
    end_ns = int(end * _NS)
    labels = dict(profile.labels)
    pending: list[tuple[int, int, _Event]] = []
    sequence = 0
    for run in _runs(profile, spec, end):
        # Later runs start at or after their slot, so everything before it is final.
        while pending and pending[0][0] <= run.scheduled * _NS:
            yield heapq.heappop(pending)[2]
        if spec.running_events:
            heapq.heappush(
                pending,
                (run.started_ns, sequence, _Event(run.started_ns, False, run, profile, labels)),
            )
            sequence += 1
        if run.finished_ns <= end_ns:
            heapq.heappush(
                pending,
                (run.finished_ns, sequence, _Event(run.finished_ns, True, run, profile, labels)),
            )
            sequence += 1
    while pending:
        yield heapq.heappop(pending)[2]


def _message(event: _Event) -> execution_pb2.PipelineExecution:
    run, profile = event.run, event.profile
    slot = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run.scheduled))
    message = execution_pb2.PipelineExecution(
        execution_id=f"{profile.pipeline_id}@{slot}",
        pipeline_id=profile.pipeline_id,
        team=profile.team,
        upstream_pipeline_ids=profile.upstream,
        labels=event.labels,
    )
    message.started_at.seconds, message.started_at.nanos = divmod(run.started_ns, _NS)
    if not event.terminal:
        message.status = _RUNNING
        return message
    message.status = run.status
    message.finished_at.seconds, message.finished_at.nanos = divmod(run.finished_ns, _NS)
    message.duration.seconds, message.duration.nanos = divmod(run.finished_ns - run.started_ns, _NS)
    message.records_processed = run.records
    message.error_message = run.error
    return message


def generate(
    spec: FleetSpec, end: float | None = None
) -> Iterator[execution_pb2.PipelineExecution]:
    """Every event of the fleet's runs from `end - days` to `end` (default now), by event time.

    The event time is `started_at` for RUNNING events and `finished_at` for terminal ones. A run
    still going at `end` has only its RUNNING event (or none without `running_events`). Terminal
    events carry `started_at`, `finished_at`, `duration` and `records_processed`, and failed ones
    an `error_message`. The `execution_id`, "<pipeline_id>@<scheduled time>", is the same in every
    simulation whose window holds the run. Deterministic for a given `spec` and `end`.
    """
    end = time.time() if end is None else end
    streams = [_events(profile, spec, end) for profile in build_fleet(spec)]
    for event in heapq.merge(*streams, key=lambda e: e.time_ns):
        yield _message(event)


def count_events(spec: FleetSpec, end: float | None = None) -> int:
    """How many events `generate(spec, end)` yields, without building them."""
    end = time.time() if end is None else end
    end_ns = int(end * _NS)
    count = 0
    for profile in build_fleet(spec):
        for run in _runs(profile, spec, end):
            count += spec.running_events + (run.finished_ns <= end_ns)
    return count


def batches(
    events: Iterable[execution_pb2.PipelineExecution], size: int
) -> Iterator[service_pb2.IngestRequest]:
    """`events` cut into IngestRequests of `size` events each (the last may hold fewer)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, not {size}")
    batch: list[execution_pb2.PipelineExecution] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield service_pb2.IngestRequest(executions=batch)
            batch = []
    if batch:
        yield service_pb2.IngestRequest(executions=batch)


class _RateColumn(ProgressColumn):
    """A task's speed in events per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} events/s", style="progress.data.speed")


# Requests sent and not yet answered: enough to keep the server busy while it makes earlier ones
# durable, few enough that a slow server holds the sender back rather than its memory.
_MAX_UNANSWERED: Final = 64


async def run(
    target: str,
    spec: FleetSpec,
    batch_size: int = 500,
    progress: bool = True,
    metadata: Sequence[tuple[str, str]] = (),
    end: float | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> SimulationResult:
    """Stream the fleet's events to the server at `target` over one StreamIngest call.

    Requests are pipelined: up to 64 go out before their answers come back. With `progress`, a
    progress bar on stderr shows the events sent and acknowledged and their rate. `metadata`
    goes with the call (e.g. an authorization token); `credentials`, TLS ones, secure the
    channel. A failed call raises grpc.aio.AioRpcError;
    the channel is closed in every case.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    end = time.time() if end is None else end
    total = count_events(spec, end) if progress else None
    unanswered = asyncio.Semaphore(_MAX_UNANSWERED)
    sizes: deque[int] = deque()
    sent = accepted = duplicates = running = rejected = 0
    bar = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    sent_task = bar.add_task("sent", total=total)
    acked_task = bar.add_task("acknowledged", total=total)

    async def requests() -> AsyncIterator[service_pb2.IngestRequest]:
        nonlocal sent
        for request in batches(generate(spec, end), batch_size):
            await unanswered.acquire()
            size = len(request.executions)
            sizes.append(size)
            sent += size
            bar.advance(sent_task, size)
            yield request

    began = time.perf_counter()
    with bar:
        channel_cm = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        async with channel_cm as channel:
            stub = service_pb2_grpc.PipelineMonitorStub(channel)
            call = stub.StreamIngest(requests(), metadata=tuple(metadata))
            async for response in call:
                unanswered.release()
                accepted += response.accepted
                duplicates += response.duplicates
                running += response.running
                rejected += len(response.rejected)
                bar.advance(acked_task, sizes.popleft() if sizes else 0)
    return SimulationResult(
        sent=sent,
        accepted=accepted,
        duplicates=duplicates,
        running=running,
        rejected=rejected,
        seconds=time.perf_counter() - began,
    )
