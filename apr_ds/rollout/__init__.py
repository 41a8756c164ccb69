"""The rollout side: the HTTP client of SGLang-protocol servers (and, later, the spawn/join runtime).

No DeepSpeed here. `client.py` is the only HTTP client in apr-ds; it talks to `apr-ds serve` on CPU
and to SGLang on GPU clusters alike.
"""
