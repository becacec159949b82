"""WireGuard's protocol constants (whitepaper section 6.1; wireguard-go ``constants.go``)."""

from __future__ import annotations

__all__ = [
    "COOKIE_REFRESH_TIME",
    "HANDSHAKE_INITIATION_RATE",
    "KEEPALIVE_TIMEOUT",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_ON_RECEIVE_AGE",
    "REKEY_TIMEOUT",
    "REKEY_TIMEOUT_JITTER_MAX",
    "UNDER_LOAD_AFTER_TIME",
]

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333
REJECT_AFTER_TIME = 180.0
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 0.020  # at most one accepted initiation per 20 ms per peer
UNDER_LOAD_AFTER_TIME = 1.0  # "under load" stays on this long after the trigger
# The initiator rekeys when a receive finds its keypair this old (180 - 10 - 5 = 165 s),
# so a fresh session exists before the responder's RejectAfterTime.
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
# Retransmissions before giving up: RekeyAttemptTime / RekeyTimeout (wireguard-go).
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
MAX_STAGED_PACKETS = 128  # packets held per peer while waiting for a session
