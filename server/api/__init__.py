"""The faces of the server: the gRPC servicer, authentication and load limits, TLS, and the HTTP
port with its /metrics collector.
"""
