"""Outgoing HTTP, shared by the HTTP executor (engine.workers.http) and the API's
``GET /services/{id}/health``: where calls may go (the address policy), the
settings of outgoing calls, TLS contexts and the registry's health checks."""
