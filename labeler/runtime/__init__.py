"""Planning shards, the run folder, executing shards on Ray workers, progress and status."""
