"""The processes of a job and what connects them: roles and placement of ranks, MPI messages and the
trajectory transport, ports and addresses, and the weight-update process group.

Only torch.distributed and mpi4py live here: no DeepSpeed, no HTTP. `weight_group.py` is the one
place that builds the weight-update group, for both the learner side and our inference server.
"""
