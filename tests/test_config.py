import subprocess

import pytest
import yaml

from apr_ds.config import ConfigError, available_presets, load_config, save_config


def test_presets_load_and_differ():
    assert {"tiny", "cpu", "paper"} <= set(available_presets())
    tiny, paper = load_config("tiny"), load_config("paper")
    assert tiny.task.num_numbers == 3 and paper.task.num_numbers == 4
    assert (paper.task.min_number, paper.task.max_number, paper.task.min_target, paper.task.max_target) == (1, 99, 10, 100)


@pytest.mark.parametrize("preset", ["tiny", "cpu", "paper"])
def test_every_preset_rolls_out_within_the_context_of_the_model_it_trains(preset):
    """A preset whose rollout limit exceeds its own model's context cannot run rl or eval: the server refuses it."""
    from apr_ds.data.tokenizer import vocabulary
    from apr_ds.model import llama_config
    cfg = load_config(preset)
    context = llama_config(cfg.model.preset, len(vocabulary()), context=cfg.model.context).max_position_embeddings
    assert cfg.rollout.max_context <= context
    assert cfg.data.max_seq_len <= context


def test_overrides_are_typed():
    cfg = load_config("tiny", ["task.num_train=12", "solver.spawn_probability=1", "data.keep_failed=false", "run_dir=/x"])
    assert cfg.task.num_train == 12
    assert cfg.solver.spawn_probability == 1.0 and isinstance(cfg.solver.spawn_probability, float)
    assert cfg.data.keep_failed is False
    assert cfg.run_dir == "/x"


@pytest.mark.parametrize("override, message", [
    ("task.num_trian=3", "unknown config key 'task.num_trian' (did you mean 'task.num_train'?)"),
    ("tsk.seed=1", "did you mean 'task.seed'?"),
    ("num_val=1", "did you mean 'task.num_val'?"),
    ("task.seed=abc", "config key 'task.seed' expects an integer, got 'abc'"),
    ("data.keep_failed=3", "config key 'data.keep_failed' expects true or false"),
    ("task=3", "config key 'task' is a section"),
    ("task.seed", "is not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert message in str(err.value)


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  num_numbres: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'task.num_numbers'"):
        load_config("tiny", config_file=str(bad))
    bad.write_text("task: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("tiny", config_file=str(bad))
    with pytest.raises(ConfigError, match="unknown preset 'tinny'.*did you mean 'tiny'"):
        load_config("tinny")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("cpu", ["task.seed=7"])
    path = save_config(cfg, tmp_path)
    again = load_config(None, config_file=str(path))
    assert again == cfg
    assert yaml.safe_load(path.read_text())["task"]["seed"] == 7


def test_cli_reports_config_errors_without_traceback(apr_ds_cli, tmp_path):
    proc = subprocess.run(apr_ds_cli + ["data", "--preset", "tiny", f"run_dir={tmp_path}", "task.sed=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "apr-ds data: error: unknown config key 'task.sed' (did you mean 'task.seed'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing written for a config that does not load


@pytest.mark.parametrize("override, message", [
    ("rl.loss_agg=tokens", "rl.loss_agg must be token_mean or token_sum, got 'tokens'"),
    ("rl.advantage=baseline", "rl.advantage must be group_norm or reward, got 'baseline'"),
    ("rl.temperature=0", "rl.temperature must be > 0 (RL samples its programs; 0 is greedy decoding), got 0.0"),
    ("rl.line_penalty=-1", "rl.line_penalty must be >= 0 (it is subtracted from a wrong line's advantage), got -1.0"),
    ("rollout.top_k=1", "rl needs untruncated sampling: rollout.top_p must be 1 and rollout.top_k -1, got 1.0 and 1"),
])
def test_rl_rejects_a_bad_objective_setting_before_starting_ranks(apr_ds_cli, tmp_path, override, message):
    proc = subprocess.run(apr_ds_cli + ["rl", "--preset", "tiny", f"run_dir={tmp_path / 'run'}", override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"apr-ds rl: error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_rl_rejects_an_overlong_buffer_as_wide_as_the_window(apr_ds_cli, tmp_path):
    proc = subprocess.run(apr_ds_cli + ["rl", "--preset", "tiny", f"run_dir={tmp_path / 'run'}", "rollout.max_context=512",
                                        "rl.overlong_buffer=512"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert ("apr-ds rl: error: rl.overlong_buffer must be in [0, rollout.max_context=512) and rl.overlong_penalty >= 0, "
            "got 512 and 1.0") in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("config_json, message", [
    ('{"max_position_embeddings": 512}',
     "rollout.max_context=1024 exceeds the SFT model's max_position_embeddings=512"),
    ('{"hidden_size": 8}', "config.json is not a readable Llama config (KeyError"),
    ("{not json", "config.json is not a readable Llama config (JSONDecodeError"),
    ('{"max_position_embeddings": null}', "config.json is not a readable Llama config (max_position_embeddings"),
    ("[1024]", "config.json is not a readable Llama config"),
    ('{"max_position_embeddings": 1024}', "no training problems"),  # a limit equal to the model's context passes
])
def test_rl_checks_the_rollout_limit_against_its_models_context_before_starting_ranks(apr_ds_cli, tmp_path,
                                                                                       config_json, message):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config_json)
    proc = subprocess.run(apr_ds_cli + ["rl", "--preset", "tiny", f"run_dir={tmp_path / 'run'}", f"rl.init_model={model}",
                                        "rollout.max_context=1024"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"apr-ds rl: error: " in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_the_paper_preset_matches_apr_ref():
    """apr-reference §1-5: 4 numbers in 1..99, targets 10..100; a 228M Llama at 4,096 tokens; SFT batch 256,
    lr 5e-5, 19k steps; GRPO 64 prompts x 5 rollouts, lr 1e-5, 150 steps. Not run here (no GPU): validated."""
    from apr_ds.model import count_parameters, llama_config
    paper = load_config("paper")
    assert (paper.task.num_numbers, paper.task.min_number, paper.task.max_number) == (4, 1, 99)
    assert (paper.task.min_target, paper.task.max_target) == (10, 100)
    model = llama_config(paper.model.preset, vocab_size=1117, context=paper.model.context)
    assert model.max_position_embeddings == 4096 and paper.data.max_seq_len == 4096
    assert count_parameters(model) == 227_709_952
    sft = paper.sft
    assert (sft.global_batch, sft.lr, sft.steps, sft.precision) == (256, 5e-5, 19_000, "bf16")
    rl = paper.rl
    assert (rl.prompts_per_step, rl.group_size, rl.lr, rl.steps) == (64, 5, 1e-5, 150)
    assert (rl.temperature, rl.clip_eps, rl.beta, rl.ppo_epochs, rl.grad_clip) == (1.0, 0.2, 0.001, 2, 1.0)
    assert rl.server == "sglang" and paper.rollout.max_context == 4096
