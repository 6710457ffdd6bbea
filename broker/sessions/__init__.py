"""Sessions: the protocol-independent core that relays, records and polices a session."""
