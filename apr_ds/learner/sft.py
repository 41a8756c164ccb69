"""`apr-ds sft`: supervised fine-tuning on solver traces, DeepSpeed ZeRO-3 across ranks.

Reads `{run_dir}/data/` (from `apr-ds data`), writes `{run_dir}/sft/{method}/`:
    checkpoints/step_*/   sharded DeepSpeed checkpoints (see checkpoint.py); `--resume auto` continues from the newest
    hf/                   the final model as a Hugging Face directory (AutoModelForCausalLM, SGLang)
    tb/                   TensorBoard events from rank 0; scalars.jsonl holds the same numbers
    config.yaml           the resolved config

One machine, CPU, 2 ranks (each verified; one thread per rank on a 2-core machine; from the repo
root, or anywhere once `pip install -e .` is done):
    export OMP_NUM_THREADS=1
    torchrun --standalone --nproc_per_node 2 -m apr_ds.cli sft --preset tiny sft.method=sosp
    deepspeed --num_gpus 2 --no_local_rank --module apr_ds.cli sft --preset tiny sft.method=sosp
    .venv/bin/mpirun -n 2 .venv/bin/python -m apr_ds.cli sft --preset tiny sft.method=sosp
    apr-ds sft --preset tiny                        # no launcher: a world of one
(`deepspeed` without --num_gpus starts one process on CPU machines; `--no_local_rank` keeps it from
adding `--local_rank=N`, which `apr-ds` does not take. Use the venv's mpirun, not /usr/bin/mpirun.)

Many machines (GPUs, NCCL), e.g. 4 nodes x 8 GPUs (the same entry points; not run here, there is no GPU):
    deepspeed --hostfile hosts --num_nodes 4 --num_gpus 8 --no_local_rank --module apr_ds.cli sft --preset paper
    srun --mpi=pmi2 -N 4 --ntasks-per-node 8 python -m apr_ds.cli sft --preset paper   # PMI_SIZE; MPI discovery
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_endpoint HOST:PORT -m apr_ds.cli sft --preset paper

Loss: mean cross-entropy over every non-pad target token of the global batch, prompt included (the
paper's choice: the prompt is one line of the trace language, and learning it costs nothing at
inference). Each micro-batch's summed loss is scaled so that DeepSpeed's averaging over accumulation
steps and ranks yields exactly that global per-token mean, however lengths fall across ranks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from apr_ds.errors import UserError
from apr_ds.log import ScalarWriter, get_logger

log = get_logger(__name__)


def add_arguments(parser) -> None:
    from apr_ds.config import add_config_arguments
    add_config_arguments(parser)
    parser.add_argument("--resume", default="auto",
                        help="auto (newest complete checkpoint of this run, else start fresh), none, or a checkpoint path")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop after this many steps (with a checkpoint), as if preempted; the schedule still spans sft.steps")


def main(args) -> int:
    from apr_ds.config import config_from_args
    train(config_from_args(args), resume=args.resume, stop_after=args.stop_after)
    return 0


def train(cfg, resume: str = "auto", stop_after: int | None = None) -> dict:
    """Check everything, join the process group, train, always leave the group. Returns the last metrics."""
    from apr_ds.data.dataset import BatchPlan, load_sft_data
    from apr_ds.learner.checkpoint import resolve_resume
    from apr_ds.learner.engine import close_distributed, init_distributed, load_ds_config, world_size_from_env
    from apr_ds.model import config_for_preset

    sft = cfg.sft
    out = Path(cfg.run_dir) / "sft" / sft.method
    world_size = world_size_from_env()
    # Bad input stops here, before any process group or model exists.
    ds_config = load_ds_config(sft.deepspeed, sft.optim, sft.global_batch, world_size, "sft")
    data = load_sft_data(Path(cfg.run_dir) / "data", sft.method)
    model_config = config_for_preset(cfg.model.preset, data.vocab_size, cfg.model.context, cfg.model.family,
                                     cfg.model.tie_embeddings)
    context = model_config.max_position_embeddings
    plan = BatchPlan(data.train.lengths(context), sft.global_batch, sft.deepspeed.micro_batch, world_size, sft.seed,
                     sft.bucket_steps)
    resume_path = resolve_resume(resume, out / "checkpoints")
    init_model = check_init_model(sft, data, model_config)
    truncated = int((data.train.lengths() > context).sum())
    if truncated:
        log.warning(f"{truncated} of {len(data.train)} training sequences are longer than the model context {context} "
                    f"and are truncated; raise model.context or lower data.max_seq_len")

    init_distributed()
    try:
        return _train(cfg, out, ds_config, data, model_config, plan, resume_path, init_model, stop_after)
    finally:
        close_distributed()


def check_init_model(sft, data, model_config) -> Path | None:
    """The model directory a continued SFT starts from, checked against the data and the preset; None = fresh weights."""
    from apr_ds.data.tokenizer import tokenizer_sha256
    from apr_ds.model import check_weights

    if not sft.init_model:
        return None
    path = Path(sft.init_model.replace("{method}", sft.method))
    if not (path / "config.json").is_file():
        raise UserError(f"sft.init_model: {path} is not a model directory (no config.json)")
    if tokenizer_sha256(path) != data.manifest["tokenizer_sha256"]:
        raise UserError(f"sft.init_model: {path} has a different tokenizer from the data's; continued SFT needs the same one")
    saved = json.loads((path / "config.json").read_text())
    expected = model_config.to_dict()
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "max_position_embeddings", "tie_word_embeddings")
    differ = [f"{k} {saved.get(k)} (preset {expected.get(k)})" for k in keys if saved.get(k) != expected.get(k)]
    if differ:
        raise UserError(f"sft.init_model: {path} does not have the model preset's shape: {', '.join(differ)}")
    check_weights(path)
    return path


def _train(cfg, out, ds_config, data, model_config, plan, resume_path, init_model, stop_after) -> dict:
    import torch.distributed as dist

    from apr_ds.config import save_config
    from apr_ds.learner.checkpoint import checkpoint_tag

    sft, rank, world_size = cfg.sft, dist.get_rank(), dist.get_world_size()
    if world_size != plan.world_size:
        raise UserError(f"the launcher announced {plan.world_size} ranks but {world_size} joined; check the launcher's "
                        f"environment (WORLD_SIZE / PMI_SIZE / OMPI_COMM_WORLD_SIZE)")
    context = model_config.max_position_embeddings
    engine, start = _start_engine(sft, ds_config, model_config, init_model, resume_path, world_size,
                                  data.manifest["tokenizer_sha256"])
    if rank == 0:
        save_config(cfg, out)
    writer = ScalarWriter(out / "tb", enabled=rank == 0)
    evaluator = Evaluator(cfg, data, model_config, context)
    log.info(f"sft {sft.method}: {world_size} ranks, {plan.accumulation} accumulation steps, "
             f"{len(data.train)} train sequences ({plan.steps_per_epoch} steps/epoch), steps {start}->{sft.steps}"
             + (f", from {init_model}" if init_model else ""))
    last_stop = sft.steps if stop_after is None else min(stop_after, sft.steps)
    metrics = _run_steps(engine, cfg, out, data, model_config, plan, evaluator, writer, start, last_stop)

    if last_stop == sft.steps:
        final = out / "checkpoints" / checkpoint_tag(sft.steps)  # saved by the loop, or the one a finished run resumed from
        metrics["export/max_abs_logit_diff"] = export_final(engine, final, out / "hf", data, context, rank)
        writer.scalars(sft.steps, {"export/max_abs_logit_diff": metrics["export/max_abs_logit_diff"]})
        log.info(f"exported {out / 'hf'} (max |logit diff| vs engine {metrics['export/max_abs_logit_diff']:.2e})")
    writer.close()
    return metrics


def _start_engine(sft, ds_config, model_config, init_model, resume_path, world_size: int, tokenizer_sha: str):
    """The engine on fresh weights or `init_model`'s, restored from `resume_path` if any. Returns it and its next step."""
    from apr_ds.learner.checkpoint import load_checkpoint
    from apr_ds.learner.engine import build_engine
    from apr_ds.model import build_model, load_hf

    model = load_hf(init_model).train() if init_model else build_model(model_config, seed=sft.seed)
    engine = build_engine(model, sft.optim, sft.steps, ds_config)
    start = 0
    if resume_path is not None:
        start = load_checkpoint(engine, resume_path, world_size, tokenizer_sha)["step"]
        log.info(f"resumed from {resume_path} at step {start}")
    return engine, start


def _run_steps(engine, cfg, out, data, model_config, plan, evaluator, writer, start: int, last_stop: int) -> dict:
    """Steps start..last_stop, each logged, evaluated and checkpointed on its schedule. Returns the last metrics."""
    import torch.distributed as dist
    from tqdm import tqdm

    from apr_ds.learner.checkpoint import save_checkpoint
    from apr_ds.learner.engine import lr_at

    sft, rank, world_size = cfg.sft, dist.get_rank(), dist.get_world_size()
    context = model_config.max_position_embeddings
    tokenizer_sha = data.manifest["tokenizer_sha256"]

    def trainer_state(step):
        return {"step": step, "epoch": step // plan.steps_per_epoch, "step_in_epoch": step % plan.steps_per_epoch,
                "seed": sft.seed, "world_size": world_size, "tokenizer_sha256": tokenizer_sha}

    def save(step):
        return save_checkpoint(engine, out / "checkpoints", step, trainer_state(step), model_config, data.tokenizer_dir,
                               sft.checkpoint.keep_last)

    meter = Meter()
    metrics: dict = {}
    bar = tqdm(total=sft.steps, initial=start, disable=rank != 0, desc=f"sft {sft.method}", unit="step", dynamic_ncols=True)
    for step in range(start, last_stop):
        meter.add(train_step(engine, data.train, plan, step, rank, context))
        done = step + 1
        if done % sft.log_every == 0 or done == last_stop:
            metrics = meter.summarise(engine, lr=lr_at(step, sft.optim, sft.steps))  # the lr this step used
            writer.scalars(done, metrics)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.1e}",
                            tok_s=f"{metrics['train/tokens_per_s']:.0f}", pad=f"{metrics['train/padding_fraction']:.1%}")
        if done % sft.eval_every == 0 or done == sft.steps:
            metrics.update(evaluator.run(engine, done, writer, rank, world_size))
            if rank == 0:
                bar.write(f"step {done}: val loss {metrics.get('val/loss', float('nan')):.4f}, "
                          f"probe accuracy {metrics.get('val/probe_accuracy', float('nan')):.1%}")
        if done % sft.checkpoint.save_every == 0 or done == last_stop:
            save(done)
        bar.update(1)
    bar.close()
    return metrics


# ---------------------------------------------------------------------------- one optimizer step


def train_step(engine, split, plan, step: int, rank: int, context: int) -> dict:
    """Forward/backward over this rank's micro-batches, then the optimizer step (DeepSpeed steps at the boundary)."""
    import torch.nn.functional as F

    from apr_ds.data.dataset import IGNORE_INDEX, collate

    started = time.perf_counter()
    stats = plan.step_stats(step)
    # Per-token mean over the whole global batch; DeepSpeed divides by accumulation steps and world size.
    scale = plan.accumulation * plan.world_size / stats["targets"]
    loss_sum = 0.0
    for indices in plan.rank_micro_batches(step, rank):
        input_ids, labels = collate(split, indices, context)
        logits = engine(input_ids=input_ids.to(engine.device)).logits
        summed = F.cross_entropy(logits.float().flatten(0, 1), labels.to(engine.device).flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        engine.backward(summed * scale)
        engine.step()
        loss_sum += summed.item()
    return {"loss_sum": loss_sum, "seconds": time.perf_counter() - started, **stats}


class Meter:
    """Sums per-step numbers between two logs; `summarise` makes the interval's scalars (one all-reduce)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss_sum = self.targets = self.tokens = self.padded = self.seconds = 0.0
        self.steps = 0

    def add(self, s: dict):
        self.loss_sum += s["loss_sum"]
        self.targets += s["targets"]
        self.tokens += s["tokens"]
        self.padded += s["padded_tokens"]
        self.seconds += s["seconds"]
        self.steps += 1

    def summarise(self, engine, lr: float) -> dict:
        import torch
        import torch.distributed as dist

        total = torch.tensor([self.loss_sum], dtype=torch.float64, device=engine.device)
        dist.all_reduce(total)  # each rank holds its own micro-batches' loss sums; `targets` is global already
        grad_norm = engine.get_global_grad_norm()
        metrics = {
            "train/loss": total.item() / self.targets,
            "train/lr": lr,
            "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "train/tokens_per_s": self.tokens / self.seconds,
            "train/padding_fraction": 1 - self.tokens / self.padded,
            "train/step_time_s": self.seconds / self.steps,
        }
        self.reset()
        return metrics


# ---------------------------------------------------------------------------- evaluation and export


class Evaluator:
    """Validation loss over the val split and the greedy probe; both collective."""

    def __init__(self, cfg, data, model_config, context: int):
        from apr_ds.data.dataset import eval_batches
        from apr_ds.data.tokenizer import load_tokenizer
        from apr_ds.learner.probe import GreedyProbe, load_probe_problems, probe_prompt
        from apr_ds.tasks import get_task

        self.data, self.context = data, context
        self.batches = eval_batches(data.val, cfg.sft.eval_sequences, cfg.sft.deepspeed.micro_batch, context)
        task = get_task(cfg)
        problems = load_probe_problems(task, data.data_dir, cfg.sft.probe_problems)
        built_with = data.manifest.get("config", {})  # the settings the data was made with, not today's config
        data_config = {**built_with.get("data", {}), "apr_max_beam": built_with.get("solver", {}).get("apr_max_beam")}
        prompts = [probe_prompt(task, cfg.sft.method, p, data_config) for p in problems]
        tokenizer = load_tokenizer(data.tokenizer_dir)
        self.probe = GreedyProbe(task, problems, prompts, tokenizer, model_config, context) if problems else None

    def run(self, engine, step: int, writer: ScalarWriter, rank: int, world_size: int) -> dict:
        metrics = {}
        if self.batches:
            metrics["val/loss"] = validation_loss(engine, self.data.val, self.batches, rank, world_size, self.context)
        if self.probe is not None:
            result = self.probe.run(engine, rank, world_size)
            metrics["val/probe_accuracy"] = result["accuracy"]
            writer.text(step, "val/probe_sample", "```\n" + result["sample"] + "\n```")
        writer.scalars(step, metrics)
        return metrics


def validation_loss(engine, split, batches, rank: int, world_size: int, context: int) -> float:
    """Per-token loss over all `batches`, split across ranks. ZeRO-3 forwards are collective, so a rank
    that runs out of batches repeats one and ignores the result."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from apr_ds.data.dataset import IGNORE_INDEX, collate

    mine = batches[rank::world_size]
    rounds = -(-len(batches) // world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=engine.device)
    engine.eval()
    with torch.no_grad():
        for k in range(rounds):
            input_ids, labels = collate(split, mine[k] if k < len(mine) else batches[0], context)
            logits = engine(input_ids=input_ids.to(engine.device)).logits
            if k < len(mine):
                labels = labels.to(engine.device)
                totals[0] += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
                totals[1] += (labels != IGNORE_INDEX).sum()
    engine.train()
    dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def export_final(engine, checkpoint: Path, hf_dir: Path, data, context: int, rank: int) -> float:
    """Rank 0 exports the final checkpoint; then the export is loaded back and its logits compared with
    the engine's on one val batch. Returns the max |difference| (0 up to float noise in fp32; bf16 differs)."""
    import torch
    import torch.distributed as dist

    from apr_ds.data.dataset import collate
    from apr_ds.learner.checkpoint import export_checkpoint
    from apr_ds.model import load_hf

    if rank == 0:
        export_checkpoint(checkpoint, hf_dir)
    dist.barrier()
    split = data.val if len(data.val) else data.train
    input_ids, _ = collate(split, range(min(4, len(split))), context)
    engine.eval()
    with torch.no_grad():
        engine_logits = engine(input_ids=input_ids.to(engine.device)).logits.float().cpu()
    engine.train()
    diff = torch.zeros(1, dtype=torch.float64, device=engine.device)
    if rank == 0:
        with torch.no_grad():
            hf_logits = load_hf(hf_dir)(input_ids=input_ids).logits.float()
        diff[0] = (hf_logits - engine_logits).abs().max()
    dist.broadcast(diff, src=0)
    return diff.item()
