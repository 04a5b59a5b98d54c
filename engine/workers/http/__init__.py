"""The HTTP executor: service calls over HTTP to the registry's instances or the environment's URLs."""
