"""Kept for one release (until 0.3): submitit pickles of chains queued before the wings name this module."""

from vlmtune_cli.cluster.link import ChainLink, LinkSpec  # noqa: F401
