from __future__ import annotations

from tunneld.control._ratelimit import TokenBucket


def test_bucket_starts_full_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 tokens
    assert bucket.take(100.5)  # 1.0 token
    assert bucket.take(200.0, amount=3.0)  # refill caps at burst
    assert not bucket.take(200.0)


def test_bucket_amount_larger_than_held_spends_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=10.0, now=0.0)
    assert not bucket.take(0.0, amount=11.0)
    assert bucket.take(0.0, amount=10.0)


def test_zero_rate_is_unlimited() -> None:
    bucket = TokenBucket(rate=0.0, burst=0.0, now=0.0)
    assert all(bucket.take(0.0, amount=1e9) for _ in range(100))
