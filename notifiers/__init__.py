"""Notifier workers: alert events delivered to PagerDuty, Slack, email, webhooks and the console.

The server calls one object, `notifiers.dispatcher.Dispatcher`: `start()`, then
`submit(event, notify)` for each `pipewarden.v1.AlertEvent` (it never waits for the network),
and `close()`. Inside, one module per concept:

- `config`: the `receivers:` and `routes:` of the configuration, typed and validated;
- `router` (team, severity → receivers), `nflog` (what each receiver was told: dedup);
- `outbox` (the durable log of pending notifications), `deadletters` (the given-up ones);
- `worker` (one per receiver: queue, rate limit, timeout, retries), `ratelimit`, `retry`;
- the adapters: `pagerduty`, `slack`, `email`, `webhook`, `console`, over `http`;
- `notification` (the texts they share), `errors`, `metrics`.

Nothing is imported here, so that reading the configuration does not load the HTTP and SMTP
clients.
"""
