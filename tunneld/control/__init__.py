"""The control plane: coordinator, DERP relay, STUN, users and tokens, storage."""
