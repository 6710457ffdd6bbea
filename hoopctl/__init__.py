"""hoopctl: log in, reach targets through the hoop broker, approve and replay sessions."""

__version__ = "0.1.0"
