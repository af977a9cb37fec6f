"""``labeler report``: one HTML page of plots that sums up a run (:mod:`.command`)."""
