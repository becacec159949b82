"""tunneld: one long-lived, WireGuard-compatible overlay shared by many local clients."""

__version__ = "0.1.0"
