"""Solver runs -> SFT sequences, the domain tokenizer, and token datasets for the learner."""
