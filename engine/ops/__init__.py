"""The operator surface: the CLI and its verbs, dead letters, top, logs."""
