"""COCO annotations: RLE encoding, per-shard parts, and the final merge into JSON and Parquet."""
