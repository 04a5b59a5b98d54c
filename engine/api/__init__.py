"""The HTTP service: REST routes of the seeds, live streams over SSE and WebSocket, JWT auth."""
