"""apr-ds's CPU inference server: continuous batching, a radix prefix cache and SGLang's HTTP protocol.

One file per concern (a request's path through them, in order):

    server.py       `apr-ds serve`: CLI, aiohttp app, API-key check
    endpoints.py    one handler per SGLang endpoint; work goes to the engine thread
    protocol.py     SGLang request/response shapes; bad requests -> HTTP 400
    engine.py       model + pool + scheduler on one dedicated thread (submit / call)
    scheduler.py    continuous batching: waiting/running, prefill then decode, retraction
    prefix_cache.py radix tree over token ids, LRU eviction
    decode_slab.py  running contexts kept contiguous between decode steps (no per-step gather)
    kv_pool.py      KV storage by slot and a reference-counted slot allocator
    runner.py       one forward pass over a ragged batch, then sampling (token ids + log-probs)
    model.py        the Llama / Qwen2 / Qwen3 forward with a paged KV cache; loads HF checkpoints
    detokenizer.py  text, per-token text and stop strings
    sequence.py     request state with asserted invariants
    weights.py      weight-group join, bucket loading, reload from disk
    toy.py          random Llama, Qwen2 and Qwen3 checkpoints for tests and benchmarks

No DeepSpeed here; the only HTTP library is aiohttp, in server.py and endpoints.py.
"""
