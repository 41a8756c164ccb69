"""The weight-version protocol between learner rank 0 and the rollout ranks, in two sibling files:
`publisher.py` (learner side: Setup, WeightUpdate, Go, Regroup, Stop; when the learner's bucketed broadcast runs;
read-back probes; the admission quota) and `receiver.py` (rollout side: pause, join or rebuild the group, receive, flush, continue;
Ready, ServerDown, ServerBack). The messages themselves are apr_ds/cluster/messages.py.

No DeepSpeed and no HTTP here: the learner hands the publisher its broadcast, the rollout rank hands the
receiver its client.
"""
