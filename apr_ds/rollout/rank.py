"""The rollout-rank loop of `apr-ds rl`: run spawn/join programs on this rank's server, ship finished groups
to the learners over MPI, and apply each new weight version to the server.

Admission control (AReaL-style): with weights at version v, this rank may have started at most
(v + eta + 1) x quota groups in all, quota being its share of rl.prompts_per_step. So rollouts run at most
eta versions ahead of the learner and never pile up; eta = 0 is synchronous on the same code path.

A weight version arrives as a `WeightUpdate` over MPI; the rank then drives its server:
pause (retract: in-flight requests keep their output and resume) -> /update_weights_from_distributed per
bucket, while learner rank 0 broadcasts -> /flush_cache -> /continue_generation. No DeepSpeed here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from apr_ds.dist.messages import CONTROL, GroupHeader, ProgramStats, Setup, Stop, WeightUpdate
from apr_ds.dist.transport import PendingSends, send_group
from apr_ds.errors import UserError
from apr_ds.rollout.client import ServerError
from apr_ds.log import get_logger

log = get_logger(__name__)


def start_server(cfg, rollout_index: int, model_dir: str, log_dir: Path):
    """This rank's server: a child process it owns (ours or SGLang), or a given URL. Returns (process or None, url)."""
    from apr_ds.rollout.server_proc import ServerProcess
    rl = cfg.rl
    log_path = str(log_dir / f"server{rollout_index}.log")
    if rl.server == "url":
        if len(rl.server_urls) <= rollout_index:
            raise UserError(f"rl.server=url needs one URL per rollout rank in rl.server_urls; got {len(rl.server_urls)}")
        return None, rl.server_urls[rollout_index]
    if rl.server == "sglang":
        server = ServerProcess.start_sglang(model_dir, cfg.rollout.max_context, log_path=log_path, extra_args=rl.server_args)
    elif rl.server == "ours":
        server = ServerProcess.start_ours(model_dir, log_path=log_path, threads=rl.server_threads, overrides=[
            f"engine.max_model_len={cfg.rollout.max_context}", f"engine.num_threads={rl.server_threads}",
            f"engine.seed={rl.seed + rollout_index}", *rl.server_args])
    else:
        raise UserError(f"rl.server must be ours, sglang or url, got {rl.server!r}")
    (log_dir / f"server{rollout_index}.pid").write_text(f"{server.proc.pid}\n")  # for operators (and the fault tests)
    return server, server.url


def group_arrays(trajectories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every generation call with output becomes one training sequence: prompt ids (masked) + sampled ids."""
    tokens, logprobs, table = [], [], []
    for program, trajectory in enumerate(trajectories):
        for thread in trajectory.threads:
            for segment in thread.segments:
                if not segment.output_ids:
                    continue
                tokens += segment.prompt_ids + segment.output_ids
                logprobs += segment.logprobs
                table.append((len(segment.prompt_ids), segment.context_len, program))
    return np.asarray(tokens, np.int32), np.asarray(logprobs, np.float32), np.asarray(table, np.int64).reshape(-1, 3)


def program_stats(trajectory) -> ProgramStats:
    return ProgramStats(trajectory.correct, len(trajectory.threads), trajectory.num_spawns, trajectory.children_per_spawn(),
                        trajectory.total_tokens(), trajectory.sequential_tokens(), trajectory.longest_thread(),
                        trajectory.latency_s)


class RolloutRank:
    def __init__(self, cfg, roles, client, tokenizer, task, problems, setup: Setup):
        from apr_ds.rollout.runtime import ProgramRunner
        rollout = cfg.rollout
        rollout.temperature = cfg.rl.temperature
        self.cfg, self.roles, self.client, self.task, self.problems = cfg, roles, client, task, problems
        self.runner = ProgramRunner(client, tokenizer, task, rollout)
        self.version = setup.version
        self.index, self.num_ranks = roles.rollout_index, roles.num_rollouts
        base, extra = divmod(cfg.rl.prompts_per_step, self.num_ranks)
        self.quota = base + (self.index < extra)
        self.groups_started = setup.first_group
        self.gate = asyncio.Semaphore(cfg.rl.programs_in_flight)
        self.pending = PendingSends()
        self.tasks: set[asyncio.Task] = set()
        self.busy_s = self.idle_s = 0.0
        self.stopping = False
        self.weight_probe = None

    def admitted(self) -> bool:
        return self.groups_started < (self.version + self.cfg.rl.max_staleness + 1) * self.quota

    async def run_group(self, group_index: int):
        problem = self.problems[(group_index * self.num_ranks + self.index) % len(self.problems)]
        version = self.version

        async def one():
            async with self.gate:
                return await self.runner.run(problem, self.cfg.rl.method)
        trajectories = await asyncio.gather(*[one() for _ in range(self.cfg.rl.group_size)])
        return group_index, version, trajectories

    def ship(self, group_index: int, version: int, trajectories) -> None:
        tokens, logprobs, table = group_arrays(trajectories)
        header = GroupHeader(self.index, group_index, version, [float(t.correct) for t in trajectories],
                             [program_stats(t) for t in trajectories], len(table), int(tokens.size), int(logprobs.size),
                             self.busy_s, self.idle_s, self.weight_probe)
        self.weight_probe = None
        send_group(self.roles.world, 0, header, tokens, logprobs, table, self.pending)

    async def apply(self, update: WeightUpdate) -> None:
        await self.client.pause_generation("retract")
        for bucket in update.buckets:
            await self.client.update_weights_from_distributed(bucket["names"], bucket["dtypes"], bucket["shapes"],
                                                              weight_version=str(update.version))
        await self.client.flush_cache()
        await self.client.continue_generation()
        self.version = update.version
        # read back what the server now holds; learner rank 0 checks it against what it sent
        self.weight_probe = (update.version, {name: await self.client.get_weights_by_name(name, truncate_size=2)
                                              for name in update.probes})

    def next_control(self):
        from mpi4py import MPI
        world = self.roles.world
        if world.Iprobe(source=0, tag=CONTROL):
            return world.recv(source=0, tag=CONTROL)
        return None

    async def loop(self) -> None:
        last = time.monotonic()
        while not self.stopping:
            while self.admitted():
                task = asyncio.create_task(self.run_group(self.groups_started))
                self.tasks.add(task)
                self.groups_started += 1
            message = self.next_control()
            if isinstance(message, WeightUpdate):
                await self.apply(message)
            elif isinstance(message, Stop):
                self.stopping = True
            for task in [t for t in self.tasks if t.done()]:
                self.tasks.discard(task)
                try:
                    self.ship(*task.result())
                except ServerError as e:  # programs absorb bad output; only a server that is gone gets here
                    raise UserError(f"the inference server {self.client.base_url} stopped answering ({e}); "
                                    f"see its log next to the run's TensorBoard folder") from None
            self.pending.poll()
            now = time.monotonic()
            if self.tasks:
                self.busy_s += now - last
            else:
                self.idle_s += now - last
            last = now
            await asyncio.sleep(0.002)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.pending.wait()


async def join_weight_group(client, setup: Setup, rollout_index: int) -> None:
    await client.init_weights_update_group(setup.master_address, setup.master_port, rank_offset=1 + rollout_index,
                                           world_size=setup.group_world_size)


def run_rollout(cfg, roles, model_dir: str, out_dir: Path) -> None:
    """Entry of a rollout rank: start the server, wait for the learners' Setup, run until Stop."""
    from transformers import AutoTokenizer

    from apr_ds.eval.run import load_problems
    from apr_ds.rollout.client import RolloutClient
    from apr_ds.tasks import get_task

    cfg.eval.split, cfg.eval.num_problems = "train", 0
    problems = load_problems(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    server, url = start_server(cfg, roles.rollout_index, model_dir, out_dir)
    try:
        if server is not None:
            server.wait_healthy()
        setup = roles.world.recv(source=0, tag=CONTROL)
        if isinstance(setup, Stop):
            return

        async def main():
            async with RolloutClient(url, timeout_s=cfg.rl.timeout_s) as client:
                await client.wait_until_healthy(timeout_s=120)
                await join_weight_group(client, setup, roles.rollout_index)
                rank = RolloutRank(cfg, roles, client, tokenizer, get_task(cfg), problems, setup)
                await rank.loop()
                await client.destroy_weights_update_group()
        asyncio.run(main())
    finally:
        if server is not None:
            server.stop()
