"""Pure core: events (validate, normalise, aliases), envelopes, items and keys, OTLP, queries.

stdlib, orjson and protobuf only; no I/O and no AWS.
"""
