"""The Pipewarden server: ingestion, sharded state, the event log and the gRPC service.

Rooms, lower to higher: `base`, `storage`, `core`, `detection`, `alerting`, `partition`,
`openlineage`, `api`; the modules here wire them (`app`, `config`, `notifier`).
"""
