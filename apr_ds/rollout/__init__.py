"""The rollout side: everything that talks to inference servers. No DeepSpeed here.

`client.py` is the only HTTP client in apr-ds: it talks to `apr-ds serve` on CPU and to SGLang on GPU
clusters alike, and holds the learner-side half of weight updates. The spawn/join runtime and the
rollout-rank loop sit beside it and use it.
"""
