"""mail-bridge: Dovecot/Postfix events to Redis Streams to browsers, in real time."""

__version__ = "0.1.0"
