"""A small synthetic `{run_dir}/data/` in the layout `apr-ds data` writes, for fast learner tests.

Only the token files, tokenizer, manifest and val problems the learner reads; no solver runs.
"""

import json

import numpy as np

from apr_ds.data.tokenizer import save_tokenizer, tokenizer_sha256


def make_data_dir(run_dir, num_train=64, num_val=12, seed=0, min_len=8, max_len=60):
    data = run_dir / "data"
    tokenizer = save_tokenizer(data / "tokenizer")
    vocab = len(tokenizer)
    rng = np.random.default_rng(seed)
    counts = {}
    for method in ("sosp", "apr"):
        counts[method] = {}
        for split, n in (("train", num_train), ("val", num_val)):
            lengths = rng.integers(min_len, max_len + 1, size=n)
            seqs = [np.concatenate([[1], rng.integers(4, vocab, size=L - 2), [2]]) for L in lengths]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            path = data / "tokens" / method / f"{split}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, ids=np.concatenate(seqs).astype(np.int32), offsets=offsets)
            counts[method][split] = {"sequences": int(n)}
    (data / "problems").mkdir(parents=True, exist_ok=True)
    (data / "problems" / "val.jsonl").write_text("".join(
        json.dumps({"nums": [3, 5, 7], "target": 22 + i}) + "\n" for i in range(4)))
    manifest = {"format": 1, "tokenizer_sha256": tokenizer_sha256(data / "tokenizer"), "vocab_size": vocab,
                "methods": counts, "config": {"data": {}, "solver": {}}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data
