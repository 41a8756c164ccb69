"""GPU smoke check for apr-ds on one CUDA device, in a few minutes and without network (run by tests/gpu/smoke.sh,
which installs this repo first; README.md beside this file says what it needs).

    python tests/gpu/smoke.py --out DIR          # DIR/summary.json; exit 0 when every stage passed
    python tests/gpu/smoke.py --check-cuda       # only: is there a CUDA device? (exit 2 and why, if not)
    python tests/gpu/smoke.py --cpu-dry-run ...  # the same stages on CPU (gloo, fp32): checks this script, not a GPU

Stages, each timed and written to the summary:
  data          `apr-ds data --preset tiny`, small
  sft           `apr-ds sft --preset tiny` for a few ZeRO-3 steps on CUDA, NCCL, bf16 (ds_configs/zero3.json), one
                rank; it checkpoints, exports {run_dir}/sft/apr/hf and compares the export's logits with the engine's
  reload        the export loaded with transformers on CUDA in bf16: logits against fp32 on CPU, then prefill and
                decode tokens/s
  engine        our inference engine's forward on CUDA, if apr_ds.engine has a device option (it says so if not)
  weight_group  apr_ds.cluster.weight_group's NCCL group (the path SGLang's /init_weights_update_group takes) with
                learner rank 0 alone: communicator set-up and a broadcast.

What one GPU cannot test: the weight group between two processes. NCCL refuses two ranks of one communicator on
the same device ("Duplicate GPU detected"), so learner rank 0 and a server rank need two GPUs; on one GPU only the
one-rank group runs. The gloo version of the two-process group is covered by the CPU tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = 2  # exit code: nothing was run


def cuda_problem() -> str | None:
    """Why this machine cannot run the smoke check (no torch, or torch without a CUDA device); None when it can."""
    try:
        import torch
    except ImportError as e:
        return f"PyTorch is not importable ({e}); run this with the Python that has PyTorch with CUDA (PYTHON=...)"
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        return (f"no CUDA device: torch {torch.__version__} ({build}) sees no GPU "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); run this on a GPU machine")
    return None


# ---------------------------------------------------------------------------- stages


class Smoke:
    """Runs the stages in order and keeps what each found; a stage that needs a failed one is skipped."""

    def __init__(self, out: Path, work: Path, steps: int, model_preset: str, dry_run: bool):
        self.out, self.work, self.steps, self.model_preset, self.dry_run = out, work, steps, model_preset, dry_run
        self.run_dir = work / "run"
        self.device = "cpu" if dry_run else "cuda"
        self.stages: dict[str, dict] = {}

    def stage(self, name: str, function, needs: tuple[str, ...] = ()) -> None:
        missing = [n for n in needs if not self.stages.get(n, {}).get("ok")]
        if missing:
            self.stages[name] = {"ok": False, "skipped": f"needs {', '.join(missing)}"}
            print(f"[smoke] {name}: skipped (needs {', '.join(missing)})", flush=True)
            return
        print(f"[smoke] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            result = {"ok": True, **(function() or {})}
        except Exception as e:  # every stage reports; the summary says which failed and why
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - started, 2)
        self.stages[name] = result
        shown = {k: v for k, v in result.items() if k != "traceback"}
        print(f"[smoke] {name}: {json.dumps(shown)}", flush=True)

    def data(self) -> dict:
        run_cli("data", "--preset", "tiny", f"run_dir={self.run_dir}", "data.workers=4", "task.num_train=200",
                "task.num_val=32", "task.num_test=8", "task.num_test_unseen_targets=8",
                log=self.work / "data.log", timeout_s=240)
        return {"run_dir": str(self.run_dir)}

    def sft(self) -> dict:
        ds_config, precision = ("zero3_cpu.json", "fp32") if self.dry_run else ("zero3.json", "bf16")
        log_every = max(1, self.steps // 3)  # the last interval's tokens/s leaves the first steps' warm-up out
        run_cli("sft", "--preset", "tiny", f"run_dir={self.run_dir}", "sft.method=apr",
                f"model.preset={self.model_preset}", f"sft.deepspeed.config={ds_config}", f"sft.deepspeed.precision={precision}",
                f"sft.steps={self.steps}", "sft.global_batch=16", "sft.deepspeed.micro_batch=16", "sft.optim.warmup_steps=2",
                f"sft.log_every={log_every}", f"sft.eval_every={self.steps}", f"sft.checkpoint.save_every={self.steps}",
                "sft.eval_sequences=32", "sft.probe_problems=2",
                log=self.work / "sft.log", timeout_s=420)
        out = self.run_dir / "sft" / "apr"
        rows = [json.loads(line) for line in (out / "scalars.jsonl").read_text().splitlines() if line.strip()]
        losses = [row["train/loss"] for row in rows if "train/loss" in row]
        speeds = [row["train/tokens_per_s"] for row in rows if "train/tokens_per_s" in row]
        export_diffs = [row["export/max_abs_logit_diff"] for row in rows if "export/max_abs_logit_diff" in row]
        if not losses or not all(math.isfinite(loss) for loss in losses):
            raise AssertionError(f"training losses are missing or not finite: {losses}")
        if len(losses) > 1 and not losses[-1] < losses[0]:
            raise AssertionError(f"the loss did not go down over {self.steps} steps: {losses}")
        if not (out / "hf" / "config.json").is_file():
            raise AssertionError(f"no export at {out / 'hf'}")
        return {"ds_config": ds_config, "precision": precision, "model_preset": self.model_preset,
                "losses": losses, "train_tokens_per_s": speeds[-1] if speeds else None,
                "export_max_abs_logit_diff": export_diffs[-1] if export_diffs else None,
                "checkpoints": sorted(path.name for path in (out / "checkpoints").glob("step_*"))}

    def reload(self) -> dict:
        import torch
        from transformers import AutoModelForCausalLM

        hf_dir = self.run_dir / "sft" / "apr" / "hf"
        dtype = torch.float32 if self.dry_run else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).to(self.device).eval()
        reference = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        vocab, context = model.config.vocab_size, model.config.max_position_embeddings
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (4, min(128, context)), generator=generator)
        with torch.no_grad():
            logits = model(input_ids=ids.to(self.device)).logits.float().cpu()
            expected = reference(input_ids=ids).logits.float()
        if not torch.isfinite(logits).all():
            raise AssertionError("the reloaded model's logits are not finite")
        agree = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
        return {"dtype": str(dtype).removeprefix("torch."),
                "max_abs_logit_diff_vs_fp32_cpu": (logits - expected).abs().max().item(),
                "argmax_agreement_vs_fp32_cpu": agree, **self.throughput(model, vocab, context)}

    def throughput(self, model, vocab: int, context: int) -> dict:
        """Prefill tokens/s (one forward over a full batch) and greedy decode tokens/s (transformers' generate)."""
        import torch

        batch, length = (8, min(128, context)) if self.dry_run else (64, min(512, context))
        ids = torch.randint(0, vocab, (batch, length), device=self.device)
        with torch.no_grad():
            prefill_s = timed(lambda: model(input_ids=ids), self.device, repeats=3 if self.dry_run else 10)
            prompt = ids[:, : length // 4]
            new = min(64, context - prompt.shape[1])
            decode_s = timed(lambda: model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                                    max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                                    pad_token_id=model.config.eos_token_id or 0),
                             self.device, repeats=1)
        return {"prefill_tokens_per_s": batch * length / prefill_s, "decode_tokens_per_s": batch * new / decode_s,
                "prefill_shape": [batch, length], "decode_batch": batch, "decode_new_tokens": new}

    def engine(self) -> dict:
        import dataclasses

        from apr_ds.config import EngineConfig
        if "device" not in {field.name for field in dataclasses.fields(EngineConfig)}:
            return {"ran": False, "note": "apr_ds.engine has no device option: it loads the model on CPU "
                                          "(engine/model.py load_model), so its forward was not run on CUDA; "
                                          "GPU serving is SGLang's"}
        from apr_ds.engine.engine import Engine
        from apr_ds.engine.sequence import SamplingParams
        engine = Engine(self.run_dir / "sft" / "apr" / "hf", EngineConfig(num_threads=1, device=self.device)).start()
        try:
            prompts = [[1, 2, 3, 4]] * 16
            started = time.perf_counter()
            seqs = engine.generate(prompts, SamplingParams(max_new_tokens=32, temperature=0), timeout=300)
            seconds = time.perf_counter() - started
        finally:
            engine.shutdown()
        tokens = sum(len(seq.output_ids) for seq in seqs)
        return {"ran": True, "decode_tokens_per_s": tokens / seconds, "tokens": tokens}

    def weight_group(self) -> dict:
        import torch

        from apr_ds.cluster.ports import free_port
        from apr_ds.cluster.weight_group import broadcast_tensors, destroy_weight_group, init_weight_group
        backend = "gloo" if self.dry_run else "nccl"
        if backend == "nccl":
            torch.cuda.set_device(0)
        group = init_weight_group("127.0.0.1", free_port(), rank=0, world_size=1, group_name="smoke_weight_group",
                                  backend=backend, timeout_s=120)
        try:
            tensor = torch.arange(1024, dtype=torch.bfloat16, device=self.device)
            broadcast_tensors(group, [tensor])
            if self.device == "cuda":
                torch.cuda.synchronize()
        finally:
            destroy_weight_group(group)
        return {"backend": backend, "world_size": 1,
                "note": "two ranks need two GPUs: NCCL refuses two ranks of one communicator on one device"}


def timed(function, device: str, repeats: int) -> float:
    """Seconds per call after one warm-up call, with the GPU's queue drained around the timed calls."""
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    function()
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    sync()
    return (time.perf_counter() - started) / repeats


def run_cli(*args: str, log: Path, timeout_s: float) -> None:
    """`python -m apr_ds.cli ARGS` in its own process group, output to `log`; on a timeout the group is killed."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4"), "PYTHONWARNINGS": "ignore::FutureWarning"}
    with open(log, "w") as output:
        proc = subprocess.Popen([sys.executable, "-m", "apr_ds.cli", *args], cwd=REPO, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"apr-ds {args[0]} ran over {timeout_s:.0f}s; {log} ends with:\n{tail(log)}") from None
    if code != 0:
        raise RuntimeError(f"apr-ds {args[0]} exited with {code}; {log} ends with:\n{tail(log)}")


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------- summary


def environment(dry_run: bool) -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "dry_run_on_cpu": dry_run}
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "nccl": nccl_version()}
    for package in ("deepspeed", "transformers", "mpi4py"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def nccl_version() -> str:
    import torch
    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int (2708) in older ones
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def tokens_per_s(stages: dict) -> dict:
    """The throughput numbers of every stage, in one place."""
    found = {}
    for name, result in stages.items():
        for key, value in result.items():
            if key.endswith("tokens_per_s") and isinstance(value, (int, float)):
                found[f"{name}/{key}"] = round(value, 1)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/apr-ds-gpu-smoke",
                        help="folder for summary.json and the stages' logs (default: $OUT, else /tmp/apr-ds-gpu-smoke)")
    parser.add_argument("--steps", type=int, default=30, help="SFT steps (default 30)")
    parser.add_argument("--model-preset", default="tiny", help="model.preset for SFT: tiny (default), cpu or paper")
    parser.add_argument("--check-cuda", action="store_true", help="only check for a CUDA device")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the stages on CPU (gloo, fp32) to check this script; proves nothing about GPUs")
    args = parser.parse_args(argv)
    problem = None if args.cpu_dry_run else cuda_problem()
    if problem:
        print(f"smoke: {problem}", file=sys.stderr)
        return NO_CUDA
    if args.check_cuda:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apr-ds-smoke-") as work:
        smoke = Smoke(out, Path(work), args.steps, args.model_preset, args.cpu_dry_run)
        smoke.stage("data", smoke.data)
        smoke.stage("sft", smoke.sft, needs=("data",))
        smoke.stage("reload", smoke.reload, needs=("sft",))
        smoke.stage("engine", smoke.engine, needs=("sft",))
        smoke.stage("weight_group", smoke.weight_group)
        for log in ("data.log", "sft.log"):  # the stages' own output comes back with the summary
            if (Path(work) / log).is_file():
                (out / log).write_text((Path(work) / log).read_text(errors="replace")[-200_000:])
    ok = all(result["ok"] for result in smoke.stages.values())
    summary = {"ok": ok, "environment": environment(args.cpu_dry_run), "tokens_per_s": tokens_per_s(smoke.stages),
               "stages": smoke.stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    verdicts = ", ".join(f"{name} {'ok' if result['ok'] else 'FAILED'}" for name, result in smoke.stages.items())
    print(f"[smoke] {'PASSED' if ok else 'FAILED'}: {verdicts}")
    for key, value in summary["tokens_per_s"].items():
        print(f"[smoke] {key}: {value:,.0f} tokens/s")
    print(f"[smoke] summary: {out / 'summary.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
