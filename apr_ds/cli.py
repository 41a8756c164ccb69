"""`apr-ds <command>`: one entry point per stage. Each command parses its config, runs, and always cleans up.

    apr-ds data  --preset tiny [key=value ...]     problems -> solver traces -> SFT sequences + tokenizer
    apr-ds sft   --preset tiny [key=value ...]     SFT with DeepSpeed ZeRO-3 (launchers: apr_ds/learner/sft.py)
    apr-ds export CKPT OUT                         a checkpoint -> a Hugging Face model directory
    apr-ds serve --model DIR [--port P] [key=value ...]   a Llama, Qwen2 or Qwen3 checkpoint behind SGLang's HTTP API (CPU)
    apr-ds compare A.json B.json [--windows 512 768]   two eval runs paired problem by problem
    apr-ds view PATH [PATH2] --out page.html       programs (eval's or RL's) as one self-contained HTML page
"""

from __future__ import annotations

import argparse
import importlib
import sys

from apr_ds.errors import UserError

# command -> (module, help). Each module has `add_arguments(parser)` and `main(args) -> int`.
COMMANDS = {
    "data": ("apr_ds.data.build", "build problems, solver traces, SFT sequences and the tokenizer"),
    "eval": ("apr_ds.eval.run", "evaluate APR, SoS+ or best-of-n on a split: accuracy, tokens, latency"),
    "report": ("apr_ds.eval.report", "plots and a Markdown table from eval results"),
    "view": ("apr_ds.view.build", "spawn/join programs as one self-contained HTML page: index, tree, timeline, text"),
    "compare": ("apr_ds.eval.compare", "two eval runs on the same problems, paired: both / only A / only B, sign test"),
    "demo": ("apr_ds.demo", "the whole pipeline on the tiny preset: data, SFT, RL, eval, report"),
    "rl": ("apr_ds.launch", "asynchronous GRPO: ZeRO-3 learner ranks + rollout ranks running spawn/join programs"),
    "sft": ("apr_ds.learner.sft", "supervised fine-tuning on the traces (DeepSpeed ZeRO-3; run under a launcher for many ranks)"),
    "export": ("apr_ds.learner.export", "write a Hugging Face model directory from an SFT/RL checkpoint"),
    "serve": ("apr_ds.engine.server", "serve a Hugging Face Llama, Qwen2 or Qwen3 checkpoint over SGLang's HTTP protocol (CPU)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported, so `apr-ds data` never pays for DeepSpeed's import."""
    parser = argparse.ArgumentParser(prog="apr-ds", description="Adaptive Parallel Reasoning trainer")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    # key=value overrides may come before or after options: argparse leaves the later ones unparsed.
    args, rest = parser.parse_known_args(argv)
    extra = [a for a in rest if "=" in a and not a.startswith("-")]
    if len(extra) != len(rest) or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in extra or not hasattr(args, 'overrides'))}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return int(args.module.main(args) or 0)
    except UserError as e:
        print(f"apr-ds {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"apr-ds {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
