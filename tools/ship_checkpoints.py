"""Copy trained Hugging Face models into the repository as shipped checkpoints, with a manifest.

    python tools/ship_checkpoints.py --out checkpoints/cpu --commit 1347f72 \
        --model sosp=runs/cpu/sft/sosp/hf --model apr=runs/cpu/sft/apr/hf --model apr_rl=runs/cpu/rl_apr/hf \
        --command sosp="apr-ds sft --preset cpu sft.method=sosp ..." ...

Each model lands in {out}/{name}/ (config, safetensors, tokenizer) next to the resolved config.yaml of the run
that trained it. {out}/MANIFEST.json records per model: the command, seed and commit that produced it, and
the sha256 of every file; tests/test_shipped.py checks that they load and still match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_config(model_dir: Path) -> Path | None:
    """The resolved config.yaml of the run that wrote `model_dir` (its parent's, for {run}/hf)."""
    for candidate in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def ship(name: str, source: Path, out: Path, command: str, commit: str) -> dict:
    import yaml
    if not (source / "config.json").is_file() or not (source / "model.safetensors").is_file():
        sys.exit(f"ship_checkpoints: {source} is not a Hugging Face model directory (config.json, model.safetensors)")
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copy2(path, target / path.name)
    config = run_config(source)
    seed = None
    if config is not None:
        shutil.copy2(config, target / "config.yaml")
        resolved = yaml.safe_load(config.read_text())
        section = resolved.get("rl") if "rl" in source.parent.name else resolved.get("sft")
        seed = {"task.seed": resolved["task"]["seed"], "train.seed": (section or {}).get("seed")}
    files = {p.name: sha256(p) for p in sorted(target.iterdir()) if p.is_file()}
    return {"command": command, "commit": commit, "seed": seed, "source": str(source), "files": files,
            "bytes": sum((target / f).stat().st_size for f in files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--command", action="append", default=[], metavar="NAME=COMMAND")
    parser.add_argument("--commit", required=True, help="the commit the models were trained at")
    parser.add_argument("--notes", default="", help="free text for the manifest (e.g. where the results are)")
    args = parser.parse_args()
    commands = dict(item.split("=", 1) for item in args.command)
    manifest_path = args.out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": {}}
    for item in args.model:
        name, source = item.split("=", 1)
        manifest["models"][name] = ship(name, Path(source), args.out, commands.get(name, ""), args.commit)
    if args.notes:
        manifest["notes"] = args.notes
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(m["bytes"] for m in manifest["models"].values())
    print(f"{'model':<10} {'MB':>6}  sha256(model.safetensors)")
    for name, entry in manifest["models"].items():
        print(f"{name:<10} {entry['bytes'] / 1e6:>6.2f}  {entry['files'].get('model.safetensors', '')[:16]}")
    print(f"{'total':<10} {total / 1e6:>6.2f}  -> {manifest_path}")


if __name__ == "__main__":
    main()
