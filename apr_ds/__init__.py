"""apr-ds: a trainer for Adaptive Parallel Reasoning (spawn/join search traces, SFT then RL)."""

__version__ = "0.1.0"
