"""The demo, its handlers and the embedded default Redis, and the example definitions."""
