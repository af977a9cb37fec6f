"""Planning shards, the run folder, and executing shards (in-process or on Ray)."""
