"""Training: run_clm.py-style arguments, training data, the Trainer subclass and the run itself."""
