"""The pure core: workflow semantics with no I/O, clock or randomness of its own."""
