"""aisfusion: one actor per vessel fusing live AIS feeds into Redis and PostgreSQL."""

__version__ = "0.1.0"
