"""Request and response bodies of the API, as msgspec Structs (the OpenAPI schemas come from them)."""
