"""The text pipeline: segmentation into units, byte ids, rendering with a cache, blocks, collation."""
