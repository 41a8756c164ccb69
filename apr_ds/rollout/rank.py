"""The rollout-rank loop of `apr-ds rl`: run spawn/join programs on this rank's server, ship finished groups
to the learners over MPI, and apply each new weight version to the server (apr_ds/weight_sync/receiver.py).

Admission control (AReaL-style): with weights at version v, this rank may have started at most
(v + eta + 1) x quota groups in all, quota being its share of rl.prompts_per_step (sent in Setup). So rollouts
run at most eta versions ahead of the learner and never pile up; eta = 0 is synchronous on the same code path.

What the learner needs from the text is computed here, where the text is made: the reward, and with
rl.line_penalty the marks of output tokens in wrong trace lines (line_marks.py). The learner never decodes.

A server this rank started and that dies is restarted in place (`recover`): ServerDown to learner rank 0,
the running groups are cancelled (they were never shipped) and queued to run again under the same index,
the server starts again, ServerBack; learner rank 0 then rebuilds the weight group (Regroup) and sends the
current version, and only then does this rank generate again. Nothing is lost and nothing counted twice.
No DeepSpeed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from pathlib import Path

import numpy as np

from apr_ds.cluster.messages import CONTROL, GroupHeader, ProgramStats, Regroup, Setup, Stop, TrajectoryGroup, WeightUpdate
from apr_ds.cluster.transport import PendingSends, send_group
from apr_ds.errors import ServerError, UserError
from apr_ds.log import get_logger
from apr_ds.weight_sync.receiver import WeightReceiver

log = get_logger(__name__)


def server_devices(cfg, roles) -> list[str] | None:
    """The GPUs of this rank's SGLang server: its share of the node (apr_ds.cluster.placement), under mpiexec or the
    deepspeed launcher. None on CPU, and under slurm/task.sh, which already narrowed CUDA_VISIBLE_DEVICES to them."""
    import torch

    from apr_ds.cluster.placement import plan_node, tp_size_from_server_args
    if os.environ.get("APR_ROLE") == "rollout" or torch.cuda.device_count() == 0:
        return None
    plan = plan_node(roles.node_ranks, tp_size_from_server_args(cfg.rl.server_args), torch.cuda.device_count(),
                     os.environ.get("CUDA_VISIBLE_DEVICES"), node=socket.gethostname())
    return plan[roles.rank]


def start_server(cfg, roles, model_dir: str, log_dir: Path):
    """This rank's server: a child process it owns (ours or SGLang), or a given URL. Returns (process or None, url)."""
    from apr_ds.rollout.server_proc import ServerProcess, resolve_sglang_python, serving_dtype, sglang_device
    rl, rollout_index = cfg.rl, roles.rollout_index
    log_path = str(log_dir / f"server{rollout_index}.log")
    if rl.server == "url":  # the choice and the URL count were checked before any rank started (launch.validate)
        return None, rl.server_urls[rollout_index]
    if rl.server == "sglang":
        server = ServerProcess.start_sglang(model_dir, cfg.rollout.max_context,
                                            python=resolve_sglang_python(rl.sglang_python),
                                            dtype=serving_dtype(rl.deepspeed.precision), device=sglang_device(),
                                            devices=server_devices(cfg, roles), log_path=log_path,
                                            extra_args=rl.server_args, threads=rl.server_threads)
    else:
        server = ServerProcess.start_ours(model_dir, log_path=log_path, threads=rl.server_threads, overrides=[
            f"engine.max_model_len={cfg.rollout.max_context}", f"engine.num_threads={rl.server_threads}",
            f"engine.seed={rl.seed + rollout_index}", *rl.server_args])
    (log_dir / f"server{rollout_index}.pid").write_text(f"{server.proc.pid}\n")  # for operators (and the fault tests)
    return server, server.url


class OwnedServer:
    """The server a rollout rank started (or None for a given URL): notices its death, starts it again."""

    def __init__(self, cfg, roles, model_dir: str, log_dir: Path):
        self._args = (cfg, roles, model_dir, log_dir)
        self.process, self.url = start_server(*self._args)

    def wait_healthy(self) -> None:
        from apr_ds.rollout.client import wait_until_healthy
        timeout_s = self._args[0].rl.server_start_timeout_s
        if self.process is not None:
            self.process.wait_healthy(timeout_s)
            return
        try:
            wait_until_healthy(self.url, timeout_s)
        except ServerError as e:
            raise UserError(f"the server {self.url} (rl.server_urls) did not answer /health: {e}") from None

    def dead(self) -> bool:
        return self.process is not None and self.process.proc.poll() is not None

    def reason(self) -> str:
        code = self.process.proc.returncode
        return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"

    def restart(self) -> str:
        """Same command, new port; back with the initial weights. Returns the new URL once healthy."""
        self.process.stop()
        self.process, self.url = start_server(*self._args)
        self.wait_healthy()
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def trajectory_group(header: GroupHeader, trajectories, line_marks=None) -> TrajectoryGroup:
    """Every generation call with output becomes one training sequence: prompt ids (masked) + sampled ids."""
    tokens, logprobs, sequences, marks = [], [], [], []
    for program, trajectory in enumerate(trajectories):
        for thread in trajectory.threads:
            for segment in thread.segments:
                if not segment.output_ids:
                    continue
                ids = segment.prompt_ids + segment.output_ids
                tokens += ids
                logprobs += segment.logprobs
                sequences.append((len(segment.prompt_ids), segment.context_len, program))
                marks.append(line_marks(ids, len(segment.prompt_ids)) if line_marks is not None
                             else np.zeros(len(segment.output_ids), np.float32))
    return TrajectoryGroup(header, np.asarray(tokens, np.int32), np.asarray(logprobs, np.float32),
                           np.asarray(sequences, np.int64).reshape(-1, 3),
                           np.concatenate(marks).astype(np.float32) if marks else np.zeros(0, np.float32))


def program_stats(trajectory) -> ProgramStats:
    return ProgramStats(trajectory.correct, len(trajectory.threads), trajectory.num_spawns, trajectory.children_per_spawn(),
                        trajectory.total_tokens(), trajectory.sequential_tokens(), trajectory.longest_thread(),
                        trajectory.latency_s, trajectory.acceleration())


def program_reward(trajectory, rl, max_context: int) -> float:
    """1 for a verified solve, else 0 (APR's reward), minus DAPO's soft overlong punishment when
    rl.overlong_buffer > 0: RL otherwise lets threads grow into the context window, where they are cut.
    A solve also earns ThreadWeaver's critical-path bonus when rl.critical_path_weight > 0; a failed program
    earns none, or spawning would pay whatever the answer."""
    reward = float(trajectory.correct)
    if trajectory.correct and rl.critical_path_weight > 0:
        reward += rl.critical_path_weight * min(trajectory.acceleration() - 1, rl.critical_path_cap)
    if rl.overlong_buffer > 0:
        excess = trajectory.longest_thread() - (max_context - rl.overlong_buffer)
        reward -= rl.overlong_penalty * min(max(excess, 0) / rl.overlong_buffer, 1.0)
    return reward


class RolloutRank:
    def __init__(self, cfg, roles, client, tokenizer, task, problems, setup: Setup, restart_server=None,
                 kept_programs=None):
        from apr_ds.rollout.line_marks import LineMarks
        from apr_ds.rollout.runtime import ProgramRunner
        self.cfg, self.roles, self.client, self.problems = cfg, roles, client, problems
        self.admit = asyncio.Event()  # cleared while the server's weights change: no request is sent then
        self.admit.set()
        rollout = dataclasses.replace(cfg.rollout, temperature=cfg.rl.temperature)
        self.runner = ProgramRunner(client, tokenizer, task, rollout, self.admit)
        self.line_marks = LineMarks(tokenizer, task) if cfg.rl.line_penalty else None
        self.weights = WeightReceiver(client, roles.world, roles.rollout_index, self.admit)
        self.version = setup.version
        self.index, self.num_ranks = roles.rollout_index, roles.num_rollouts
        self.quota, self.groups_started = setup.quota, setup.first_group
        self.gate = asyncio.Semaphore(cfg.rl.programs_in_flight)
        self.pending = PendingSends()
        self.tasks: dict[asyncio.Task, int] = {}  # running group -> its group index
        self.busy_s = self.idle_s = 0.0
        self.stopping = False
        # Fault handling (see the module docstring): `restart_server` is the OwnedServer, None in unit use.
        self.restart_server = restart_server
        self.restarts = 0
        self.kept_programs = kept_programs  # a KeptPrograms, or None: rl.keep_programs is off
        self.requeue: list[int] = []
        self.rerun: set[int] = set()
        # False while the server's weights are not the current version: after a restart, and on a resumed run
        # from the start (a server starts from the SFT weights, version 0), until the learner's first WeightUpdate
        self.synced = setup.version == 0

    def admitted(self) -> bool:
        return self.groups_started < (self.version + self.cfg.rl.max_staleness + 1) * self.quota

    def start_groups(self) -> None:
        while self.synced and self.requeue:
            self._start(self.requeue.pop(0))
        while self.synced and self.admitted():
            self._start(self.groups_started)
            self.groups_started += 1

    def _start(self, group_index: int) -> None:
        self.tasks[asyncio.create_task(self.run_group(group_index))] = group_index

    async def run_group(self, group_index: int):
        problem = self.problems[(group_index * self.num_ranks + self.index) % len(self.problems)]
        version = self.version

        async def one():
            async with self.gate:
                return await self.runner.run(problem, self.cfg.rl.method)
        trajectories = await asyncio.gather(*[one() for _ in range(self.cfg.rl.group_size)])
        return group_index, version, trajectories

    def ship(self, group_index: int, version: int, trajectories, requeued: bool) -> None:
        rewards = [program_reward(t, self.cfg.rl, self.cfg.rollout.max_context) for t in trajectories]
        header = GroupHeader(self.index, group_index, version, rewards, [program_stats(t) for t in trajectories],
                             self.busy_s, self.idle_s, self.weights.take_probe(), requeued=requeued)
        send_group(self.roles.world, 0, trajectory_group(header, trajectories, self.line_marks), self.pending)
        if self.kept_programs is not None:
            self.kept_programs.offer(version, group_index, trajectories, rewards)

    async def apply(self, update: WeightUpdate) -> None:
        if await self.weights.apply(update, not self.server_died(), self.server_gone):
            self.version, self.synced = update.version, True

    def server_died(self) -> bool:
        return self.restart_server is not None and self.restart_server.dead()

    async def server_gone(self, wait_s: float = 5.0) -> bool:
        """After a dropped connection: did this rank's server die? A killed process closes its sockets a moment
        before it can be reaped, so look again for a few seconds before calling it alive."""
        deadline = time.monotonic() + wait_s
        while not self.server_died():
            if self.restart_server is None or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def recover(self) -> bool:
        """If this rank's server died: tell learner rank 0, cancel the groups it was running (to be run again),
        restart it, and wait for the learners to regroup and re-sync it. True if a restart happened."""
        if not self.server_died():
            return False
        reason = self.restart_server.reason()
        if self.restarts >= self.cfg.rl.max_server_restarts:
            raise UserError(f"the inference server of rollout rank {self.index} died again ({reason}) after "
                            f"{self.restarts} restarts (rl.max_server_restarts); see its log")
        self.restarts += 1
        log.warning(f"rollout rank {self.index}: the inference server died ({reason}); restarting it "
                    f"(restart {self.restarts} of at most {self.cfg.rl.max_server_restarts})")
        self.weights.server_down(reason)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.requeue = sorted(self.requeue + list(self.tasks.values()))
        self.rerun.update(self.tasks.values())
        self.tasks.clear()
        self.client.base_url = await asyncio.to_thread(self.restart_server.restart)
        self.synced = False
        self.weights.server_back()
        return True

    def next_control(self):
        world = self.roles.world
        if world.Iprobe(source=0, tag=CONTROL):
            return world.recv(source=0, tag=CONTROL)
        return None

    async def ship_finished(self) -> bool:
        """Ship every finished group. False if one failed because the server is gone (recover() handles it)."""
        for task in [t for t in self.tasks if t.done()]:
            try:
                result = task.result()
            except ServerError as e:  # programs absorb bad output; only a server that is gone gets here
                if await self.server_gone():
                    return False  # recover() at the top of the next pass re-queues this group with the others
                raise UserError(f"the inference server {self.client.base_url} stopped answering ({e}); "
                                f"see its log next to the run's TensorBoard folder") from None
            group_index = self.tasks.pop(task)
            self.ship(*result, requeued=group_index in self.rerun)
        return True

    async def loop(self) -> None:
        last = time.monotonic()
        while not self.stopping:
            await self.recover()
            self.start_groups()
            message = self.next_control()
            if isinstance(message, Regroup):
                await self.weights.regroup(message)
            elif isinstance(message, WeightUpdate):
                await self.apply(message)
            elif isinstance(message, Stop):
                self.stopping = True
            await self.ship_finished()
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


def run_rollout(cfg, roles, model_dir: str, out_dir: Path) -> None:
    """Entry of a rollout rank: start the server, wait for the learners' Setup, run until Stop."""
    from transformers import AutoTokenizer

    from apr_ds.rollout.client import RolloutClient
    from apr_ds.rollout.kept_programs import KeptPrograms
    from apr_ds.tasks import get_task

    task = get_task(cfg)
    problems = task.load_problems(cfg.run_dir, "train")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    server = OwnedServer(cfg, roles, model_dir, out_dir)
    try:
        server.wait_healthy()
        setup = roles.world.recv(source=0, tag=CONTROL)
        if isinstance(setup, Stop):
            return

        async def main():
            async with RolloutClient(server.url, timeout_s=cfg.rl.timeout_s) as client:
                kept = (KeptPrograms(out_dir, roles.rollout_index, roles.num_rollouts, cfg.rl.keep_programs)
                        if cfg.rl.keep_programs else None)
                rank = RolloutRank(cfg, roles, client, tokenizer, task, problems, setup, restart_server=server,
                                   kept_programs=kept)
                await rank.weights.join(setup)
                await rank.loop()
                await rank.weights.leave()
        asyncio.run(main())
    finally:
        server.stop()
