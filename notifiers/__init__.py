"""Notifier workers that deliver routed alerts (PagerDuty, Slack, email, webhooks).

Not built yet: issue 6 adds them.
"""
