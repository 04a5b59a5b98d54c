"""The expression language of definitions: templates, conditions, JSON schemas; parsed, never evaluated."""
