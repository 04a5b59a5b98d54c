"""Bodies of the /api/v1 routes, in seed 001's words (the OpenAPI schema is generated from them)."""
