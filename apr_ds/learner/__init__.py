"""The learner: DeepSpeed ZeRO-3 engine, SFT loop, checkpoints and export. DeepSpeed is imported here and nowhere else."""
