"""The Redis boundary: keys, connection, scripts and the writes and reads of the write side."""
