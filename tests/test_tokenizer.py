from transformers import AutoTokenizer

from apr_ds.config import SolverConfig
from apr_ds.data.tokenizer import build_tokenizer, decode, encode, save_tokenizer, tokenizer_sha256, vocabulary
from apr_ds.tasks.countdown import Problem
from apr_ds.tasks.countdown_solvers import solve_apr, solve_sosp
from apr_ds.tasks.task import problem_rng


def test_special_ids_match_llama():
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert encode(tok, "<s>x</s>") == [1, tok.convert_tokens_to_ids("x"), 2]
    assert vocabulary() == vocabulary() and len(set(vocabulary())) == len(vocabulary())


def test_round_trips_every_trace_and_prompts_are_prefixes():
    tok = build_tokenizer()
    cfg = SolverConfig(apr_max_beam=6, apr_max_child_beam=10)
    for i in range(60):
        problem = Problem((i % 37 + 1, (i * 7) % 99 + 1, (i * 13) % 50 + 1, (i * 3) % 20 + 1), 10 + i % 90)
        for run in (solve_sosp(problem, cfg, problem_rng(0, "sosp", i)), solve_apr(problem, cfg, problem_rng(0, "apr", i))):
            for thread in run.threads():
                prompt_ids = encode(tok, thread.prompt)
                for text in thread.main_calls:
                    ids = encode(tok, text)
                    assert decode(tok, ids) == text
                    assert ids[:len(prompt_ids)] == prompt_ids
                    assert tok.unk_token_id not in ids


def test_numbers_are_whole_tokens_up_to_999():
    tok = build_tokenizer()
    assert len(encode(tok, "999")) == 1 and len(encode(tok, "1000")) == 4
    assert decode(tok, encode(tok, "12345*2=24690")) == "12345*2=24690"


def test_saved_directory_loads_with_autotokenizer(tmp_path):
    save_tokenizer(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Sub Call Budget: 6 Moving to Node #0\nCurrent State: 27:[22, 26, 31, 53], Operations: []"
    assert encode(loaded, text) == encode(build_tokenizer(), text)
    assert loaded.decode(encode(loaded, text)) == text
    assert len(tokenizer_sha256(tmp_path)) == 64


def test_a_local_tokenizer_can_replace_the_domain_one(tmp_path):
    """`data.tokenizer=DIR` copies a tokenizer from disk (here a digit-per-token WordLevel one, as Llama-2 splits digits)."""
    import pytest
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from apr_ds.data.tokenizer import install_tokenizer
    from apr_ds.errors import UserError
    chars = ["<unk>", "<s>", "</s>"] + sorted(set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ #:[],'<>=+-*/.\n"))
    raw = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    src = tmp_path / "src"
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(str(src))
    tok = install_tokenizer(tmp_path / "run", str(src))
    assert tok.pad_token_id is not None and len(encode(tok, "123")) == 3
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    with pytest.raises(UserError, match="no tokenizer at"):
        install_tokenizer(tmp_path / "other", str(tmp_path / "missing"))
