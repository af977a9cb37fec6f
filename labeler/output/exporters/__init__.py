"""Export formats: each one file that reads an output through :class:`~labeler.output.reader.OutputReader`."""
