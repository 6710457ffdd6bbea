"""Audit: what happened, provably.

events     AuditEvent and AuditLog: every event into the chain in the store, then to the sinks
chain      how an event is hashed and linked to the one before it
integrity  signatures over recordings and the chain head; `hoop-broker verify`
sinks/     delivery to files, stdout, syslog and webhooks (the SIEM), with a spool
index      the full-text index of sessions (commands and output) for `sessions search`
config     the [audit] config section
api        the hoop-api methods: sessions, search, recordings, verify

This package's __init__ imports nothing: its modules sit on different floors
(docs/architecture.md), and the store, below events, uses chain.
"""
