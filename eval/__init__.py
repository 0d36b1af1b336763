"""The anomaly-detection evaluation (`make eval`, `python -m eval`): a labelled scenario of a
fleet with injected faults and traps, replayed through the real ingest path with each detector
configuration, and scored per fault type. Not part of the server or the test suite."""
