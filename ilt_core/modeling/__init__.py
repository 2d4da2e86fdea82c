"""The assembled model, its loss, parameter and FLOP counts, and its checkpoints."""
