"""aisfusion: one actor per vessel fusing live AIS feeds into Redis (live) and PostgreSQL (history)."""

__version__ = "0.1.0"
