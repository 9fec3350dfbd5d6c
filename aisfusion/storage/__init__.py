"""Storage: PostgreSQL, Redis, the embedded-server manager and the asyncio bridge."""
