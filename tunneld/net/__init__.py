"""Trio adapters: one task per socket or connection, driving a sans-IO core."""
