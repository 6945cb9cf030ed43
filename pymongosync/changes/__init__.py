"""Change application split in three: read the stream, translate events to writes, write them."""
