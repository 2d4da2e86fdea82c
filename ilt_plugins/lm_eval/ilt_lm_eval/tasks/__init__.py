"""lm_eval task configs that run offline (``--include_path`` this folder; ``ilt lm-eval`` adds it itself).

- ``ilt_he_news_bpb``: bits-per-byte (and byte / word perplexity) of the he-news test split, every text scored
  whole (``loglikelihood_rolling``).
- ``ilt_he_news_mc``: which of four endings is the sentence's own, over he-news test sentences (``acc``,
  ``acc_norm``; chance is 0.25).
- group ``ilt_he_offline``: both.

Their data come from :mod:`ilt_lm_eval.tasks.he_news` (``custom_dataset``): pass ``--metadata
'{"data_dir": "data/he-news"}'`` or ``'{"data_file": "some.txt"}'`` to choose the file.
"""
