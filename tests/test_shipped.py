"""The checkpoints shipped in checkpoints/cpu/ (trained on the cpu preset with the overrides MANIFEST.json records;
docs/results.md): every file matches the sha256 in MANIFEST.json, each model loads with transformers, and it writes
the trace language."""

import hashlib
import json
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "cpu"
MANIFEST = json.loads((SHIPPED / "MANIFEST.json").read_text())


def test_the_manifest_names_the_three_models_and_how_they_were_made():
    assert set(MANIFEST["models"]) == {"sosp", "apr", "apr_rl"}
    for entry in MANIFEST["models"].values():
        assert entry["command"].startswith("apr-ds ") and len(entry["commit"]) >= 7 and entry["seed"]
    assert sum(entry["bytes"] for entry in MANIFEST["models"].values()) < 27e6  # "about 25 MB": 3 x 2.2M fp32 weights


@pytest.mark.parametrize("name", ["sosp", "apr", "apr_rl"])
def test_a_shipped_model_matches_its_checksums_and_writes_traces(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apr_ds.tasks.countdown_trace import apr_prompt, sosp_prompt
    entry, folder = MANIFEST["models"][name], SHIPPED / name
    assert {p.name for p in folder.iterdir() if p.is_file()} == set(entry["files"])
    for file, digest in entry["files"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, f"{name}/{file} changed"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = (sosp_prompt if name == "sosp" else apr_prompt)(24, [3, 8, 2, 5])
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:])
    assert "Exploring Operation" in text or "Moving to Node" in text, text
