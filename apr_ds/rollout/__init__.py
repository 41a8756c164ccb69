"""The rollout side: everything that talks to inference servers. No DeepSpeed here.

`client.py` is the only HTTP client in apr-ds: it talks to `apr-ds serve` on CPU and to SGLang on GPU
clusters alike. The spawn/join runtime (`runtime.py`), the rollout-rank loop (`rank.py`, which drives weight
updates through apr_ds/weight_sync/receiver.py) and the server processes it starts (`server_proc.py`) use it.
"""
