"""Weight updates on the server side: join the weight group, load received buckets, reload from disk.

Every method runs on the engine thread (via `Engine.call`), between forward passes, so a model is
never half-updated while it computes. A bucket is received whole before anything is loaded, and a
bucket with unknown names or wrong shapes is refused without touching the model: the sender's
broadcasts are still consumed, so the group stays in step and the next bucket can follow.
After a successful update the scheduler drops all cached KV (it was computed with other weights).

As in SGLang 0.5.23 (srt/managers/scheduler_components/weight_updater.py), updates from the weight group run
inside a session: `/begin_weight_update` opens it, `/end_weight_update` closes it, and an update outside one
is refused before anything is received.

    updater.init_group("127.0.0.1", 29600, rank_offset=1, world_size=2)
    updater.begin_update()
    updater.update_from_distributed(names, dtypes, shapes, weight_version="3")
    updater.end_update()
"""

from __future__ import annotations

import torch

from apr_ds.cluster import weight_group
from apr_ds.engine.model import CausalLM, load_state, read_checkpoint
from apr_ds.engine.scheduler import Scheduler
from apr_ds.errors import UserError


VOCAB_PARAMETERS = {"model.embed_tokens.weight", "lm_head.weight"}
VOCAB_PADDING = 64  # vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE


class WeightUpdater:
    def __init__(self, model: CausalLM, scheduler: Scheduler, timeout_s: float):
        self.model = model
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.groups: dict[str, torch.distributed.ProcessGroup] = {}
        # every name a parameter answers to, tied ones included (lm_head.weight and embed_tokens.weight)
        self.parameters = dict(model.named_parameters(remove_duplicate=False))
        # what /get_weights_by_name answers: each tensor under its first name only, as SGLang, which refuses a tied
        # output layer's name (its models look names up in named_parameters())
        self.readable = dict(model.named_parameters())
        self.session_open = False

    def begin_update(self) -> tuple[bool, str]:
        if self.session_open:
            return False, "a weight-update session is already open; call end_weight_update() first"
        self.session_open = True
        return True, "Success"

    def end_update(self) -> tuple[bool, str]:
        if not self.session_open:
            return False, "no weight-update session is open; call begin_weight_update() first"
        self.session_open = False
        return True, "Success"

    def init_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int,
                   group_name: str, backend: str | None) -> tuple[bool, str]:
        if group_name in self.groups:
            return False, f"weight group {group_name!r} exists already; destroy it first"
        # one process = tensor-parallel rank 0, so this server's rank is rank_offset itself
        try:
            self.groups[group_name] = weight_group.init_weight_group(
                master_address, master_port, rank_offset, world_size, group_name, backend, self.timeout_s)
        except Exception as e:  # e.g. nobody at the rendezvous before the timeout
            return False, f"Failed to initialize custom process group: {e}."
        return True, "Succeeded to initialize custom process group."

    def destroy_group(self, group_name: str) -> tuple[bool, str]:
        group = self.groups.pop(group_name, None)
        if group is None:
            return False, "The group to be destroyed does not exist."
        weight_group.destroy_weight_group(group)
        return True, "Succeeded to destroy custom process group."

    def update_from_distributed(self, names: list[str], dtypes: list[torch.dtype], shapes: list[list[int]],
                                group_name: str, weight_version: str | None) -> tuple[bool, str]:
        if not self.session_open:
            return False, ("update_weights_from_distributed must run between begin_weight_update() and "
                           "end_weight_update()")
        group = self.groups.get(group_name)
        if group is None:
            return False, f"no weight group {group_name!r}: call /init_weights_update_group first"
        tensors = weight_group.receive_tensors(group, dtypes, shapes)
        problems = [self._problem(name, tensor) for name, tensor in zip(names, tensors)]
        problems = [p for p in problems if p]
        if problems:
            return False, "bucket refused, nothing loaded: " + "; ".join(problems[:5])
        with torch.no_grad():
            for name, tensor in zip(names, tensors):
                self.parameters[name].copy_(tensor)
        self.scheduler.weights_changed(weight_version)
        return True, "Succeeded to update parameter online." + _version_note(weight_version)

    def update_from_disk(self, model_path: str, weight_version: str | None) -> tuple[bool, str]:
        try:
            load_state(self.model, read_checkpoint(model_path), model_path)
        except (UserError, OSError) as e:
            return False, str(e)
        self.scheduler.weights_changed(weight_version)
        return True, "Succeeded to update model weights." + _version_note(weight_version)

    def get_weights(self, name: str, truncate_size: int) -> list | None:
        """SGLang's `/get_weights_by_name` (models/llama.py `get_weights_by_name`): the first `truncate_size` rows,
        as float32 nested lists. SGLang stores the vocabulary-sized matrices with their rows padded with zeros to a
        multiple of 64 (layers/vocab_parallel_embedding.py `pad_vocab_size`) and answers with the padding."""
        param = self.readable.get(name)
        if param is None:
            return None
        rows = param.detach()[:truncate_size].float()
        if name in VOCAB_PARAMETERS and truncate_size > len(param):
            padded = -(-len(param) // VOCAB_PADDING) * VOCAB_PADDING
            rows = torch.cat([rows, rows.new_zeros(min(truncate_size, padded) - len(param), *rows.shape[1:])])
        return rows.tolist()

    def _problem(self, name: str, tensor: torch.Tensor) -> str | None:
        param = self.parameters.get(name)
        if param is None:
            return f"unknown parameter {name!r}"
        if tuple(param.shape) != tuple(tensor.shape):
            return f"{name} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
        return None


def _version_note(weight_version: str | None) -> str:
    """What SGLang appends to a successful update's message (tokenizer_control_mixin.py)."""
    return "" if weight_version is None else f" Weight version updated to {weight_version}."
