"""Greedy accuracy probe during SFT: decode a few val problems and check them with the strict verifier.

Main thread only: an APR model's spawn block is not run (the spawn/join runtime is its own issue), so
for APR this measures how often the main thread alone ends in a verified solution. The numbers are a
training-health signal, not the evaluation.

Every rank gets the full weights (one collective gather), decodes its share of the problems with a
plain Hugging Face model, and rank 0 collects the verdicts.
"""

from __future__ import annotations

from pathlib import Path

from apr_ds.model import BOS_ID, EOS_ID, PAD_ID, build_model, load_weights


def load_probe_problems(task, data_dir: Path, count: int) -> list:
    """The first `count` val problems of the data directory; none when it has no val problems (task.num_val=0)."""
    path = Path(data_dir) / "problems" / "val.jsonl"
    if count <= 0 or not path.is_file() or not path.read_text().strip():
        return []
    return task.load_problems("", "val", count, problems_file=str(path))


def probe_prompt(task, method: str, problem, data_config: dict) -> str:
    """The prompt the model was trained to continue, with the conditioning the data was built with
    (`data_config` is the data section recorded in manifest.json). Conditioned data gets the most
    generous budget: a token budget of data.max_seq_len (SoS+), a sub call budget of solver.apr_max_beam (APR)."""
    if method == "sosp":
        budget = data_config.get("max_seq_len") if data_config.get("sosp_token_budget") else None
        return task.prompt(problem, "sosp", token_budget=budget)
    sub_calls = data_config.get("apr_max_beam") if data_config.get("apr_sub_call_budget") else None
    return task.prompt(problem, "apr", sub_call_budget=sub_calls)


class GreedyProbe:
    def __init__(self, task, problems: list, prompts: list[str], tokenizer, model_config, context: int):
        from apr_ds.data.tokenizer import encode
        self.task, self.problems, self.prompts, self.tokenizer = task, problems, prompts, tokenizer
        self.prompt_ids = [[BOS_ID] + encode(tokenizer, p) for p in prompts]
        self.model_config, self.context = model_config, context
        self._model = None

    def run(self, engine, rank: int, world_size: int) -> dict:
        """Collective: every rank must call it. Returns {"accuracy", "sample"} on every rank."""
        import torch.distributed as dist

        from apr_ds.learner.checkpoint import gather_state_dict

        weights = gather_state_dict(engine)
        model = self._local_model(engine.device)
        load_weights(model, weights)
        mine = list(range(rank, len(self.problems), world_size))
        completions = greedy_complete(model, [self.prompt_ids[i] for i in mine], self.context, engine.device)
        results = []
        for i, ids in zip(mine, completions):
            text = self.prompts[i] + _decode(self.tokenizer, ids)
            results.append((i, self.task.verify(self.problems[i], text).ok, text))
        gathered = [None] * world_size
        dist.all_gather_object(gathered, results)
        results = sorted(r for part in gathered for r in part)
        return {"accuracy": sum(ok for _, ok, _ in results) / max(1, len(results)),
                "sample": results[0][2] if results else ""}

    def _local_model(self, device):
        if self._model is None:
            self._model = build_model(self.model_config, seed=0).to(device).eval()
        return self._model


def _decode(tokenizer, ids: list[int]) -> str:
    from apr_ds.data.tokenizer import decode
    return decode(tokenizer, [t for t in ids if t not in (PAD_ID, EOS_ID)])


def greedy_complete(model, prompts: list[list[int]], context: int, device, batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (without the prompt), each cut at eos or at `context` tokens in total."""
    import torch

    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(p):] = torch.tensor(p)
            attention_mask[row, width - len(p):] = 1
        # Decode to the budget of the shortest prompt, then cut each row to its own: equal under greedy.
        max_new = context - min(len(p) for p in batch)
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                       max_new_tokens=max_new, do_sample=False, pad_token_id=PAD_ID,
                                       eos_token_id=EOS_ID, bos_token_id=BOS_ID)
        for row, p in enumerate(batch):
            new = generated[row, width:width + context - len(p)].tolist()
            out.append(new[:new.index(EOS_ID)] if EOS_ID in new else new)
    return out
