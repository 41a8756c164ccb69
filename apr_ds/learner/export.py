"""`apr-ds export CKPT OUT`: a sharded DeepSpeed checkpoint -> a Hugging Face model directory.

    apr-ds export runs/tiny/sft/sosp/checkpoints/step_00000400 runs/tiny/sft/sosp/hf
    apr-ds export runs/tiny/sft/sosp/checkpoints OUT      # the newest complete checkpoint there

One process, no GPU and no launcher needed: the fp32 master weights are read from the shards
(DeepSpeed's zero_to_fp32). OUT loads with `AutoModelForCausalLM.from_pretrained(OUT)` and is served
by SGLang as it is. `apr-ds sft` does the same automatically for its final checkpoint (into `hf/`).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a checkpoint directory (step_*) or a checkpoints/ directory")
    parser.add_argument("out", metavar="OUT", help="the Hugging Face model directory to write")


def main(args) -> int:
    from pathlib import Path

    from apr_ds.learner.checkpoint import export_checkpoint, resolve_checkpoint
    from apr_ds.learner.engine import use_cpu_accelerator_if_no_gpu

    path = resolve_checkpoint(Path(args.checkpoint))  # exists and is complete
    use_cpu_accelerator_if_no_gpu()
    out = export_checkpoint(path, Path(args.out))
    print(f"exported {path} -> {out}")
    return 0
