"""The learner: DeepSpeed ZeRO-3 engine, the SFT and RL loops (sft.py, rl.py), checkpoints and export. DeepSpeed is
imported here and nowhere else."""
