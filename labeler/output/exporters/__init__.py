"""Exports of a finished output to the formats labeling tools read (``labeler export``)."""
