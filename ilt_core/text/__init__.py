"""The text pipeline: segmentation into units, byte ids, rendering with a cache, and batching.

- ``segmentation``: text -> units (a word with the whitespace that follows it).
- ``byte_tokenizer``: bytes <-> ids.
- ``render_cache``: an LRU cache of word images, grouped into same-width batches.
- ``shared_images``: word images shared by forked DataLoader workers.
- ``processor``: :class:`~ilt_core.text.processor.ILTProcessor`: raw texts -> a collated batch.
- ``collator``: batching: texts -> one padded :class:`~ilt_core.text.collator.Batch` (shapes in its docstring).
- ``row_collator``: batching for training: rows of blocks -> model inputs (Trainer's ``collate_fn``).
- ``lines``: text files of one text per line, read strictly.
"""
