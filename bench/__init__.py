"""Benchmarks of the real stack (`make bench`): latency, throughput, scale, against IMAP IDLE."""
