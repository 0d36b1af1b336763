"""Foundations every other room stands on: the error tree, configuration checks, supervised
tasks, log-safe text, failpoints and the process-wide metrics. Imports nothing of Pipewarden's.
"""
