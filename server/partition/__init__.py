"""A slice of the fleet on disk: snapshots of its state, recovery from a snapshot and the log,
and the replay prefetch.
"""
