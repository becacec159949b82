"""Sans-IO protocol cores: bytes and ``now`` in; bytes, events and timers out.

Nothing in this package imports trio, touches a socket or reads a clock
(``tests/test_proto_purity.py`` enforces it).
"""
