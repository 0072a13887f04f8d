"""Local and test tooling: the embedded stack (`logpipe up`), bench, faults, naive pipeline.

Imported only by `logpipe.cli`, the composition root; never by a role.
"""
