"""Historical archives: `aisfusion import`."""
