import pytest

from bridge.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("a") == pytest.approx(0.5)
    clock.now = 0.5
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")  # keys are independent


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(1.0, 1, max_keys=10, clock=Clock())
    for n in range(1000):
        limiter.allow(str(n))
    assert len(limiter._buckets) == 10


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, 1)
