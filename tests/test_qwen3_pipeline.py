"""A tiny Qwen3 with tied embeddings through the pipeline: `apr-ds sft` trains it from scratch (model.family=qwen3)
under DeepSpeed ZeRO-3, the export is a transformers Qwen3 directory, `apr-ds eval` serves it on our engine, and
`apr-ds rl` syncs its weights on our server and on real SGLang: the tied matrix is sent once (the learner names it
once, as the embedding), and on our server every version read back matches what was sent (that a pushed embedding
moves the output layer too is tests/conformance/test_qwen3.py's)."""

import json
import subprocess
import sys

import pytest


def apr_ds(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # SFT, an eval server and two RL jobs: about two minutes on 2 cores
def test_a_tied_qwen3_trains_serves_evaluates_and_syncs_its_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    apr_ds("data", "--preset", "tiny", f"run_dir={run}", "task.num_train=300", "data.workers=1")
    apr_ds("sft", "--preset", "tiny", f"run_dir={run}", "model.family=qwen3", "model.tie_embeddings=true",
           "sft.method=apr", "sft.steps=10", "sft.eval_every=10", "sft.checkpoint.save_every=10")
    hf = run / "sft" / "apr" / "hf"
    saved = json.loads((hf / "config.json").read_text())
    assert saved["model_type"] == "qwen3" and saved["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.lm_head.weight is model.model.embed_tokens.weight

    apr_ds("eval", "--preset", "tiny", f"run_dir={run}", "--model", hf, "--method", "apr", "eval.num_problems=3")
    assert json.loads((run / "eval" / "apr.json").read_text())["settings"][0]["problems"] == 3

    apr_ds("rl", "--preset", "tiny", f"run_dir={run}", f"rl.init_model={hf}", "rl.method=apr", "rl.steps=4",
           "rl.prompts_per_step=2", "rl.group_size=2", "rollout.max_context=256", "rl.checkpoint.save_every=4")
    rows = [json.loads(line) for line in (run / "rl" / "scalars.jsonl").read_text().splitlines()]
    # every version read back before the run ended matched what was sent
    assert rows[-1]["sync/checked_versions"] >= 1 and rows[-1]["sync/mismatched_versions"] == 0
    assert rows[-1]["sync/bytes"] < sum(p.numel() for p in model.parameters()) * 4 + 1  # the tied matrix sent once
    assert (run / "rl" / "hf" / "config.json").is_file()

    # the same on real SGLang, whose Qwen3 cannot read weights back by name: the run goes on, its versions unchecked
    from servers import sglang_python
    import shutil
    shutil.rmtree(run / "rl")
    apr_ds("rl", "--preset", "tiny", f"run_dir={run}", f"rl.init_model={hf}", "rl.method=apr", "rl.steps=2",
           "rl.prompts_per_step=2", "rl.group_size=2", "rollout.max_context=256", "rl.checkpoint.save_every=2",
           "rl.server=sglang", f"rl.sglang_python={sglang_python()}")
    rows = [json.loads(line) for line in (run / "rl" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["sync/checked_versions"] == 0
