"""One forward step over a ragged batch of sequences, then sampling: token ids and their log-probs.

The scheduler decides which sequences run and has already given each the KV slots of its new
tokens; the runner turns that into tensors (`llama.Batch`), runs the model, and samples. Prefill
steps gather each context from the KV pool; decode steps read it from the decode slab.

Log-probs are those of the distribution the token was drawn from before top-p/top-k truncation:
log_softmax(logits / temperature), and log_softmax(logits) for greedy requests. At temperature 1
that is exactly the log-softmax of a plain forward pass. (SGLang returns the same by default.)
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from apr_ds.engine.decode_slab import DecodeSlab
from apr_ds.engine.kv_pool import KVPool
from apr_ds.engine.model import Batch, CausalLM
from apr_ds.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, seed: int = 0):
        self.model = model
        self.pool = pool
        self.slab = DecodeSlab(pool)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], num_new: list[int], sample: list[bool]) -> tuple[list[int], list[float]]:
        """Compute KV for the last `num_new[i]` tokens of each sequence's context (`seq.num_kv` already
        counts them) and sample the next token of the sequences with `sample[i]` set."""
        if all(n == 1 for n in num_new):  # decode: contexts are read in place from the slab, in its row order
            rows = self.slab.arrange(seqs)
            batch = self.prepare(rows, [1] * len(rows), use_slab=True)
            logits = self.model(batch, self.pool.k, self.pool.v, self.slab.k, self.slab.v)
            self.slab.advance()
            row_of = {seq: row for row, seq in enumerate(rows)}
            logits = logits[[row_of[seq] for seq in seqs]]
        else:
            logits = self.model(self.prepare(seqs, num_new, use_slab=False), self.pool.k, self.pool.v)
        picked = [i for i, s in enumerate(sample) if s]
        if not picked:
            return [], []
        return self.sample(logits[picked].float(), [seqs[i] for i in picked])

    def prepare(self, seqs: list[Sequence], num_new: list[int], use_slab: bool) -> Batch:
        context_lens = [seq.num_kv for seq in seqs]
        starts = [ctx - n for ctx, n in zip(context_lens, num_new)]
        q_max, k_max = max(num_new), max(context_lens)
        ids: list[int] = []
        for seq, start, ctx in zip(seqs, starts, context_lens):
            if ctx - start == 1 and ctx == seq.num_tokens:   # decode: the newest token only
                ids.append(seq.output_ids[-1] if seq.output_ids else seq.prompt_ids[-1])
            else:
                ids.extend(seq.all_ids[start:ctx])
        new_counts = torch.tensor(num_new)
        start_t = torch.tensor(starts)
        # packed token n belongs to sequence seq_of[n] and is its offset_in_seq[n]-th new token
        seq_of = torch.repeat_interleave(torch.arange(len(seqs)), new_counts)
        first_of_seq = torch.cumsum(new_counts, 0) - new_counts
        offset_in_seq = torch.arange(len(ids)) - first_of_seq[seq_of]
        # query i of sequence b sits at position starts[b] + i and may see keys 0..starts[b] + i
        query_pos = start_t[:, None] + torch.arange(q_max)[None, :]
        mask = torch.arange(k_max)[None, None, :] <= query_pos[:, :, None]
        return Batch(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=start_t[seq_of] + offset_in_seq,
            write_slots=torch.cat([seq.slots[start:ctx] for seq, start, ctx in zip(seqs, starts, context_lens)]),
            context_slots=None if use_slab else pad_sequence([s.kv_slots for s in seqs], batch_first=True),  # 0 pads
            mask=mask.unsqueeze(1),
            query_index=None if q_max == 1 else seq_of * q_max + offset_in_seq,
            last_index=first_of_seq + new_counts - 1,
            slab_positions=start_t if use_slab else None,
        )

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float]]:
        """logits [B, V] float32 -> (token ids, their log-probs)."""
        temperatures = torch.tensor([seq.params.temperature if not seq.params.is_greedy else 1.0 for seq in seqs])
        scaled = logits / temperatures[:, None]
        logprobs = torch.log_softmax(scaled, dim=-1)
        tokens = logits.argmax(dim=-1)
        sampled_rows = [i for i, seq in enumerate(seqs) if not seq.params.is_greedy]
        if sampled_rows:
            rows = torch.tensor(sampled_rows)
            probs = self._truncate(logprobs[rows].exp(), [seqs[i].params for i in sampled_rows])
            tokens[rows] = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        token_logprobs = logprobs.gather(1, tokens[:, None]).squeeze(1)
        return tokens.tolist(), token_logprobs.tolist()

    @staticmethod
    def _truncate(probs: torch.Tensor, params: list) -> torch.Tensor:
        """Zero the probabilities outside each row's top-k and top-p sets (multinomial renormalizes)."""
        top_ks = [p.top_k for p in params]
        top_ps = [p.top_p for p in params]
        if all(k <= 0 or k >= probs.shape[1] for k in top_ks) and all(p >= 1.0 for p in top_ps):
            return probs
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        rank = torch.arange(probs.shape[1])[None, :]
        k = torch.tensor([k if k > 0 else probs.shape[1] for k in top_ks])[:, None]
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        keep = (rank < k) & (mass_before < torch.tensor(top_ps)[:, None])
        keep[:, 0] = True  # the most likely token always survives
        return torch.zeros_like(probs).scatter(1, order, sorted_probs * keep)
