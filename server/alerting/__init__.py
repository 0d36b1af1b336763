"""Alerting: anomalies become alerts with a lifecycle, silences mute them, lineage explains them.

- `model`: the domain types (Alert, AlertEvent, Silence) and their constants.
- `manager`: AlertManager, the state machine: one alert per (pipeline, kind), escalation,
  repeats, resolution, acknowledgements, silences; `policy`: its rules as pure functions;
  `book`: the alerts kept, their indexes and the bounded history per team.
- `lineage`: root causes along upstream_pipeline_ids, cycle-safe.
- `silences`: checking and matching silences.
- `feed`: the in-process stream of alert events that WatchAlerts and notifiers subscribe to.
- `convert`: the protobuf views of the domain types; `storage`: the log records and the
  snapshot frame.
- `settings`: the `alerts:` section of the configuration.
"""
