"""Training: ``ilt train``, run_clm.py-style, on transformers' ``Trainer``.

The run:

- ``run``: ``ilt train`` itself: arguments in, model built or loaded, Trainer run, metrics out.
- ``arguments``: the argument groups beside transformers' ``TrainingArguments``.
- ``trainer``: :class:`~ilt_core.training.trainer.ILTTrainer` and its callbacks.
- ``resume``: which checkpoint folders can be resumed, and whether their spec fits.

The map-style data (sources -> texts -> blocks -> packed rows -> batches, cached on disk):

- ``prepare``: the run's data: sources checked, then datasets built.
- ``sources``: the files or hub dataset the arguments name, checked before anything is read.
- ``readers``: one file's texts (text, JSON, CSV, parquet) with one bad-record rule.
- ``texts``: the Arrow cache of texts.
- ``blocks``: blocks of units (a cached ``datasets.map``) and the packing rule.
- ``rows``: the row reader (``os.pread`` of a row's bytes from the Arrow files).
- ``dataset``: :class:`~ilt_core.training.dataset.RowDataset` and Trainer's order of its rows.

The streamed data (``--streaming``, nothing cached):

- ``streaming``: the rules, and the run's stream and validation rows.
- ``shards``: which shards each rank and reader reads, in which order.
- ``stream_dataset``: the iterable dataset that makes batches from a reader's shards.
- ``transfer``: a batch's trip from a DataLoader worker to the main process.
- ``stream_loader``: the DataLoader: positions for an exact resume, shared word images.

Batches are collated by :mod:`ilt_core.text.row_collator`.
"""
