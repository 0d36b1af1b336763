"""Anomaly detection: the peer rule, each pipeline against its own history, and the deadlines
that notice what did not happen (a pipeline that went quiet, a run that never ended)."""
