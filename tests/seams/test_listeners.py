"""A run on one machine listens on loopback only: the learners' rendezvous store, the weight group's store, gloo's
pairs, MPICH's netmod and every inference server. Read from /proc while a real `apr-ds rl` runs: the sockets in
LISTEN state (/proc/net/tcp, tcp6) that a process of the run holds (/proc/PID/fd -> socket:[inode]).

One listener is beyond the project's reach and is left out: the control port of MPICH's process manager (hydra's
mpiexec, inherited by its proxy and the ranks), which hydra always binds to 0.0.0.0 (HYDU_sock_listen); `-iface`
only changes the address it advertises."""

import ipaddress
import os
import signal
import socket
import subprocess
import time

import pytest

from launching import process_alive
from rl_fixtures import ENV, rl_command

pytestmark = pytest.mark.slow

def test_a_run_on_one_machine_listens_on_loopback_only(sft_run):
    run_dir = sft_run("apr", name="listeners")
    # many steps: the run is still going when we look, and stops when we say
    command = rl_command(run_dir, "rl.steps=40", "rl.checkpoint.save_every=1", learners=2, rollouts=1)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=ENV)
    seen = []
    try:
        wait_for_first_checkpoint(run_dir, launcher)
        seen = descendants(launcher.pid)
        hydra = hydra_control_sockets(seen)
        ours = {pid: [address for inode, address in sockets if inode not in hydra]
                for pid, sockets in listeners_of(seen).items()}
        server = int((run_dir / "rl" / "server0.pid").read_text())
        # the inspection sees what is there: the server's HTTP port, the ranks' stores, gloo pairs and MPI netmod
        assert ours.get(server) and sum(1 for pid, found in ours.items() if found and pid != server) >= 3, ours
        off_loopback = {pid: found for pid, found in ours.items() if any(not loopback(address) for address, _ in found)}
        assert not off_loopback, {pid: (command_of(pid), found) for pid, found in off_loopback.items()}
        launcher.send_signal(signal.SIGTERM)  # stops every rank and server, as a user's `kill PID` does
        launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        for pid in seen:  # the servers run in sessions of their own
            if pid != launcher.pid and process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_for_first_checkpoint(run_dir, launcher) -> None:
    checkpoint = run_dir / "rl" / "checkpoints" / "step_00000001" / "COMPLETE"
    deadline = time.time() + 600  # only against a hang: a healthy run gets there in well under a minute
    while not checkpoint.is_file() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    if not checkpoint.is_file():
        launcher.kill()
        _, stderr = launcher.communicate()
        raise AssertionError(f"the run made no first checkpoint (exit code {launcher.returncode}):\n{stderr[-4000:]}")


# ---------------------------------------------------------------------------- processes and their sockets


def descendants(root: int) -> list[int]:
    """`root` and every process below it, whatever session it runs in (each server has its own)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state on this machine."""
    found = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(path) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    address, port = fields[1].split(":")
                    found[fields[9]] = (proc_address(address, family), int(port, 16))
    return found


def listeners_of(pids: list[int]) -> dict[int, list[tuple[str, tuple[str, int]]]]:
    """pid -> [(inode, (address, port))] of the listening sockets each holds."""
    listening = listening_sockets()
    return {pid: [(inode, listening[inode]) for inode in socket_inodes(pid) if inode in listening] for pid in pids}


def hydra_control_sockets(pids: list[int]) -> set[str]:
    """The inodes of the listening sockets hydra's mpiexec holds (its children inherit the same ones)."""
    return {inode for pid in pids if os.path.basename(command_of(pid).split(" ")[0]).startswith("mpiexec")
            for inode in socket_inodes(pid)}


def proc_address(hex_address: str, family: int) -> str:
    """/proc/net/tcp writes an address as 32-bit words in host byte order (little-endian here)."""
    raw = bytes.fromhex(hex_address)
    return socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ").strip()
    except OSError:
        return ""
