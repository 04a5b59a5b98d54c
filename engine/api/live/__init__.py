"""Live updates: an execution's events, or every execution's lifecycle events, pushed to
subscribers over SSE and WebSocket as they are appended (issue 12, "Live updates")."""
