"""Change streams: resume tokens, change events and the awaitData cursor serving them."""

from mongoemu.changestream.resume_token import (ResumeTokenData, decode_token, event_token,
                                                high_water_mark)
from mongoemu.changestream.stream import (ChangeStreamCursor, change_stream_error_labels,
                                          open_change_stream)

__all__ = ["ChangeStreamCursor", "ResumeTokenData", "change_stream_error_labels", "decode_token",
           "event_token", "high_water_mark", "open_change_stream"]
