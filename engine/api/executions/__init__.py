"""/executions helpers: pure view building (views), Redis reads the Client does not offer (reads), OpenAPI links (links)."""
