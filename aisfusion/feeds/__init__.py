"""Feed side: asyncio listeners, NMEA framing, tag blocks, fragment reassembly."""
