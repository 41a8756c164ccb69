"""Process groups and transports between learner ranks and rollout ranks.

Only torch.distributed and mpi4py live here: no DeepSpeed, no HTTP. `weight_group.py` is the one
place that builds the weight-update group, for both the learner side and our inference server.
"""
