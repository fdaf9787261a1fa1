"""The local stack of `make run` and the tests: Redis, the store, Dovecot, Postfix and the bridge, on loopback."""
