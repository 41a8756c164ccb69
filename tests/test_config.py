import json
import shlex
import subprocess
import typing
from pathlib import Path

import pytest
import yaml

import apr_ds.config
from apr_ds.config import (METHODS, MOVED, RL_ADVANTAGES, RL_LOSS_AGGS, RL_SERVERS, ConfigError, RLConfig, SFTConfig,
                           available_presets, config_to_dict, load_config, save_config)

REPO = Path(__file__).resolve().parents[1]


def test_presets_load_and_differ():
    assert {"tiny", "cpu", "cpu_rl", "paper"} <= set(available_presets())
    tiny, paper = load_config("tiny"), load_config("paper")
    assert tiny.task.num_numbers == 3 and paper.task.num_numbers == 4
    assert (paper.task.min_number, paper.task.max_number, paper.task.min_target, paper.task.max_target) == (1, 99, 10, 100)


@pytest.mark.parametrize("preset", ["tiny", "cpu", "cpu_rl", "paper"])
def test_every_preset_rolls_out_within_the_context_of_the_model_it_trains(preset):
    """A preset whose rollout limit exceeds its own model's context cannot run rl or eval: the server refuses it."""
    from apr_ds.data.tokenizer import vocabulary
    from apr_ds.model import config_for_preset
    cfg = load_config(preset)
    context = config_for_preset(cfg.model.preset, len(vocabulary()), context=cfg.model.context).max_position_embeddings
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
    ("rl.advantage=baseline", "rl.advantage must be group_norm or group_mean or reward, got 'baseline'"),
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
    from apr_ds.model import count_parameters, config_for_preset
    paper = load_config("paper")
    assert (paper.task.num_numbers, paper.task.min_number, paper.task.max_number) == (4, 1, 99)
    assert (paper.task.min_target, paper.task.max_target) == (10, 100)
    model = config_for_preset(paper.model.preset, vocab_size=1117, context=paper.model.context)
    assert model.max_position_embeddings == 4096 and paper.data.max_seq_len == 4096
    assert count_parameters(model) == 227_709_952
    sft = paper.sft
    assert (sft.global_batch, sft.optim.lr, sft.steps, sft.deepspeed.precision) == (256, 5e-5, 19_000, "bf16")
    rl = paper.rl
    assert (rl.prompts_per_step, rl.group_size, rl.optim.lr, rl.steps) == (64, 5, 1e-5, 150)
    assert (rl.temperature, rl.clip_eps, rl.beta, rl.ppo_epochs, rl.optim.grad_clip) == (1.0, 0.2, 0.001, 2, 1.0)
    assert rl.optim.schedule == "constant" and rl.optim.warmup_steps == 0
    assert rl.server == "sglang" and paper.rollout.max_context == 4096


# ---------------------------------------------------------------------------- choices, moved keys, validation


@pytest.mark.parametrize("override, message", [
    ("rl.server=nope", "rl.server must be ours or sglang or url, got 'nope'"),
    ("sft.method=aprr", "sft.method must be sosp or apr, got 'aprr' (did you mean 'apr'?)"),
    ("rl.method=3", "rl.method must be sosp or apr, got 3"),
    ("rl.advantage=rewards", "rl.advantage must be group_norm or group_mean or reward, got 'rewards' (did you mean 'reward'?)"),
    ("rl.loss_agg=tokens", "rl.loss_agg must be token_mean or token_sum, got 'tokens'"),
    ("sft.deepspeed.precision=fp16", "sft.deepspeed.precision must be fp32 or bf16, got 'fp16'"),
    ("rl.optim.schedule=linear", "rl.optim.schedule must be cosine or constant, got 'linear'"),
    ("data.over_length=truncate", "data.over_length must be drop or keep, got 'truncate'"),
    ("solver.heuristic=max", "solver.heuristic must be mult or sum, got 'max'"),
    ("engine.dtype=double", "engine.dtype must be float32 or bfloat16 or float16 or auto, got 'double'"),
    ("model.preset=huge", "model.preset must be tiny or cpu or paper, got 'huge'"),
    ("task.name=chess", "task.name must be countdown or sudoku, got 'chess'"),
    ("eval.split=tests", "eval.split must be train or val or test or test_unseen_targets, got 'tests' (did you mean 'test'?)"),
])
def test_a_choice_outside_its_literal_names_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert message in str(err.value)


def test_choice_constants_are_the_literals_of_their_fields():
    """One definition: the tuples other modules import are read off the config's own types."""
    sft_hints, rl_hints = typing.get_type_hints(SFTConfig), typing.get_type_hints(RLConfig)
    assert METHODS == typing.get_args(sft_hints["method"]) == typing.get_args(rl_hints["method"]) == ("sosp", "apr")
    assert RL_LOSS_AGGS == typing.get_args(rl_hints["loss_agg"])
    assert RL_ADVANTAGES == typing.get_args(rl_hints["advantage"])
    assert RL_SERVERS == typing.get_args(rl_hints["server"])


def test_closed_choices_match_what_implements_them():
    """model.preset, task.name and eval.split name things defined elsewhere: the Literal lists exactly those."""
    from apr_ds.config import SPLITS, EvalConfig, ModelConfig, TaskConfig
    from apr_ds.model import PRESETS
    from apr_ds.tasks import TASKS
    from apr_ds.tasks.countdown import SPLITS as TASK_SPLITS
    assert set(PRESETS) == set(typing.get_args(typing.get_type_hints(ModelConfig)["preset"]))
    assert set(TASKS) == set(typing.get_args(typing.get_type_hints(TaskConfig)["name"]))
    assert set(TASK_SPLITS) == set(SPLITS) == set(typing.get_args(typing.get_type_hints(EvalConfig)["split"]))


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_a_moved_key_names_its_new_place(old, new, tmp_path):
    with pytest.raises(ConfigError, match=f"^{old} moved to {new}$"):
        load_config("tiny", [f"{old}=1"])
    section, name = old.split(".")
    yaml_file = tmp_path / "old.yaml"
    yaml_file.write_text(yaml.safe_dump({section: {name: 1}}))
    with pytest.raises(ConfigError, match=f"^{old} moved to {new}$"):
        load_config("tiny", config_file=str(yaml_file))
    load_config("tiny", [f"{new}={yaml.safe_dump(getattr_dotted(load_config('tiny'), new)).splitlines()[0]}"])


def getattr_dotted(obj, dotted):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def test_rl_and_sft_share_sections_with_their_own_defaults():
    cfg = load_config(None)
    assert (cfg.rl.optim.lr, cfg.rl.optim.schedule, cfg.rl.optim.warmup_steps, cfg.rl.optim.weight_decay,
            cfg.rl.optim.grad_clip) == (1e-5, "constant", 0, 0.0, 1.0)
    assert (cfg.rl.deepspeed.config, cfg.rl.deepspeed.precision, cfg.rl.deepspeed.micro_batch) == ("zero3_cpu.json", "fp32", 4)
    assert (cfg.rl.checkpoint.save_every, cfg.rl.checkpoint.keep_last) == (10, 2)
    assert (cfg.sft.optim.lr, cfg.sft.optim.schedule, cfg.sft.optim.warmup_start_lr, cfg.sft.optim.warmup_steps,
            cfg.sft.optim.min_lr, cfg.sft.optim.weight_decay) == (5e-5, "cosine", 5e-6, 1, 5e-7, 0.01)
    assert (cfg.sft.deepspeed.config, cfg.sft.deepspeed.precision, cfg.sft.deepspeed.micro_batch) == ("zero3.json", "bf16", 8)
    assert (cfg.sft.checkpoint.save_every, cfg.sft.checkpoint.keep_last) == (1000, 3)
    changed = load_config(None, ["rl.optim.lr=3e-4"])
    assert changed.rl.optim.lr == 3e-4 and changed.sft.optim.lr == 5e-5, "each stage owns its own copy"
    assert not any(hasattr(cfg.rl, name) for name in ("lr", "ds_config", "micro_batch", "save_every", "precision"))


@pytest.mark.parametrize("override, message", [
    ("task.num_train=-5", "task.num_train must be >= 0, got -5"),
    ("task.max_number=0", "task.max_number must be >= task.min_number=1, got 0"),
    ("solver.spawn_probability=1.5", "solver.spawn_probability must be in [0, 1], got 1.5"),
    ("solver.apr_min_beam=7", "solver.apr_min_beam must be between 1 and solver.apr_max_beam, got 7..6"),
    ("data.workers=0", "data.workers must be >= 1, got 0"),
    ("model.context=1", "model.context must be >= 2, got 1"),
    ("sft.global_batch=10", "sft.global_batch=10 is not a multiple of sft.deepspeed.micro_batch=4"),
    ("sft.deepspeed.micro_batch=0", "sft.deepspeed.micro_batch must be >= 1, got 0"),
    ("sft.optim.lr=0", "sft.optim.lr must be > 0 (the schedule is a multiple of it), got 0.0"),
    ("sft.optim.min_lr=1", "sft.optim.min_lr=1.0 is above sft.optim.lr=0.002"),
    ("sft.checkpoint.save_every=0", "sft.checkpoint.save_every must be >= 1, got 0"),
    ("engine.max_running_requests=0", "engine.max_running_requests must be >= 1, got 0"),
    ("rollout.top_k=0", "rollout.top_k must be -1 (off) or >= 1, got 0"),
    ("eval.servers=0", "eval.servers must be >= 1, got 0"),
    ("rl.group_size=1", "rl.group_size must be >= 2 (advantages are normalised within a group), got 1"),
    ("rl.optim.grad_clip=-1", "rl.optim.grad_clip must be >= 0 (0 turns clipping off), got -1.0"),
    ("rl.checkpoint.keep_last=-1", "rl.checkpoint.keep_last must be >= 0 (0 keeps every checkpoint), got -1"),
    ("rl.deepspeed.micro_batch=0", "rl.deepspeed.micro_batch must be >= 1, got 0"),
])
def test_each_section_refuses_a_value_out_of_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert message in str(err.value)


def test_a_yaml_file_is_validated_as_overrides_are(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  num_train: -5\n")
    with pytest.raises(ConfigError, match="task.num_train must be >= 0, got -5"):
        load_config("tiny", config_file=str(bad))


def test_validation_sees_the_final_values_not_each_step():
    """A preset may be invalid half-way through the overrides (micro-batch raised before the batch): only the result counts."""
    cfg = load_config("tiny", ["sft.deepspeed.micro_batch=32", "sft.global_batch=64"])
    assert (cfg.sft.global_batch, cfg.sft.deepspeed.micro_batch) == (64, 32)


@pytest.mark.parametrize("overrides, message", [
    (["rl.rollout_ranks=5"], "rl.prompts_per_step=4 gives some of the 5 rollout ranks no work"),
    (["rl.server=url", "rl.rollout_ranks=2", "rl.server_urls=[http://127.0.0.1:1]"],
     "rl.server=url needs one URL per rollout rank in rl.server_urls: 2 rollout rank(s), 1 URL(s)"),
    (["rollout.top_p=0.9"], "rl needs untruncated sampling"),
    (["rl.overlong_buffer=512"], "rl.overlong_buffer must be in [0, rollout.max_context=512)"),
])
def test_rl_rules_across_sections_are_checked_for_rl_only(overrides, message):
    """slurm/plan.py and `apr-ds data` load such configs; `apr-ds rl` runs validate_rl before any rank starts."""
    cfg = load_config("tiny", overrides)
    with pytest.raises(ConfigError) as err:
        cfg.validate_rl()
    assert message in str(err.value)
    load_config("tiny").validate_rl()


def test_every_command_validates_before_writing(apr_ds_cli, tmp_path):
    proc = subprocess.run(apr_ds_cli + ["data", "--preset", "tiny", f"run_dir={tmp_path}", "task.num_train=-5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "apr-ds data: error: task.num_train must be >= 0, got -5" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()


def test_config_docstrings_stay_task_neutral():
    """The line penalty is described as the task's checked lines, not in one task's grammar."""
    source = Path(apr_ds.config.__file__).read_text()
    for phrase in ("Exploring Operation", "Current State", "Generated Node"):
        assert phrase not in source


# ---------------------------------------------------------------------------- presets


@pytest.fixture
def preset_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(apr_ds.config, "PRESET_DIR", tmp_path)
    return tmp_path


def test_a_preset_applies_its_base_first(preset_dir):
    (preset_dir / "grand.yaml").write_text("run_dir: runs/grand\ntask:\n  seed: 1\n  num_train: 10\n")
    (preset_dir / "parent.yaml").write_text("base: grand\ntask:\n  seed: 2\nrl:\n  optim:\n    lr: 3.0e-4\n")
    (preset_dir / "child.yaml").write_text("base: parent\ntask:\n  seed: 3\n")
    cfg = load_config("child")
    assert (cfg.run_dir, cfg.task.num_train, cfg.task.seed, cfg.rl.optim.lr) == ("runs/grand", 10, 3, 3e-4)
    assert load_config("parent").task.seed == 2
    config_file = preset_dir.parent / "mine.yaml"
    config_file.write_text("task:\n  seed: 4\n")
    assert load_config("child", ["task.num_train=5"], str(config_file)).task.seed == 4  # --config still comes after
    assert load_config("child", ["task.num_train=5"]).task.num_train == 5


@pytest.mark.parametrize("files, message", [
    ({"a": "base: b\n", "b": "base: a\n"}, "preset 'a' is its own base: a -> b -> a"),
    ({"a": "base: nosuch\n"}, "unknown preset 'nosuch'"),
    ({"a": "base: [b]\n", "b": ""}, "preset 'a': base must name one preset, got ['b']"),
])
def test_a_bad_base_is_named(preset_dir, files, message):
    for name, text in files.items():
        (preset_dir / f"{name}.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config("a")
    assert message in str(err.value)


def test_cpu_rl_is_cpu_with_the_rl_recipe():
    cpu, cpu_rl = load_config("cpu"), load_config("cpu_rl")
    rl = cpu_rl.rl
    assert (rl.advantage, rl.line_penalty, rl.beta, rl.prompts_per_step, rl.group_size) == ("reward", 1.0, 0.01, 32, 8)
    assert (rl.learner_ranks, rl.rollout_ranks, rl.learner_cpus, rl.rollout_cpus) == (1, 2, [0], [0, 1])
    assert (rl.temperature, rl.optim.lr, rl.optim.schedule, rl.steps, rl.method) == (0.7, 1e-4, "constant", 10, "apr")
    recipe = {"advantage", "line_penalty", "beta", "prompts_per_step", "rollout_ranks", "rollout_cpus", "steps"}
    mine, base = config_to_dict(cpu_rl), config_to_dict(cpu)
    assert {key for key in mine["rl"] if mine["rl"][key] != base["rl"][key]} == recipe
    assert {name: section for name, section in mine.items() if name != "rl"} == \
           {name: section for name, section in base.items() if name != "rl"}, "everything but RL is cpu's"


def test_the_manifest_command_reproduces_the_shipped_apr_rl_config():
    """checkpoints/cpu/MANIFEST.json records apr_rl's command with the cpu_rl preset; resolved today it gives the RL and
    rollout settings in the config.yaml that run saved (written with the old flat keys, mapped through MOVED)."""
    shipped = REPO / "checkpoints" / "cpu"
    command = json.loads((shipped / "MANIFEST.json").read_text())["models"]["apr_rl"]["command"].split("  (")[0]
    argv = shlex.split(command)
    assert argv[:4] == ["apr-ds", "rl", "--preset", "cpu_rl"]
    cfg = config_to_dict(load_config("cpu_rl", argv[4:]))
    saved = yaml.safe_load((shipped / "apr_rl" / "config.yaml").read_text())
    for section in ("rl", "rollout"):
        expected: dict = {}
        for name, value in saved[section].items():
            *parents, leaf = MOVED.get(f"{section}.{name}", f"{section}.{name}").split(".")[1:]
            target = expected
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        mine = {name: value for name, value in cfg[section].items()}
        for sub in ("optim", "deepspeed", "checkpoint"):  # fields added since keep their defaults
            if sub in expected:
                mine[sub] = {k: v for k, v in mine[sub].items() if k in expected[sub]}
        added_since = set(mine) - set(expected)
        assert added_since <= {"sglang_python", "server_start_timeout_s", "critical_path_weight", "critical_path_cap",
            "keep_programs"}, \
            added_since
        assert {k: v for k, v in mine.items() if k in expected} == expected
