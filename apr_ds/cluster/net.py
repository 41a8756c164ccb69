"""The address a rank listens on and tells other ranks to connect to, and the environment that keeps the
listeners of gloo, NCCL and MPI on it.

When every rank of the job shares one network namespace on one machine (`make demo`, a laptop, CI) that is
127.0.0.1, and nothing the run opens can be reached from another machine. Across nodes it is, in order:

    APR_HOST_ADDR=10.0.0.5     an IPv4 address of learner rank 0's node (it hosts the rendezvous stores)
    APR_SOCKET_IFNAME=eth0     the interface the nodes share, as NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME name it
    (neither)                  the first non-loopback IPv4 address this node's hostname resolves to

`gethostbyname(gethostname())` alone is not enough: hosts whose /etc/hosts maps the hostname to 127.0.1.1
(Debian, Ubuntu) would advertise an address no other node can reach.

Nothing here sends a packet: an interface's address comes from an ioctl, the hostname's from the resolver.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

from apr_ds.errors import UserError

LOOPBACK = "127.0.0.1"
HOST_ADDR_ENV = "APR_HOST_ADDR"
IFNAME_ENV = "APR_SOCKET_IFNAME"
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
_OVERRIDES = f"set {HOST_ADDR_ENV} to this node's address or {IFNAME_ENV} to the interface the nodes share (e.g. eth0, ib0)"


# ---------------------------------------------------------------------------- one node or several


def node_identity() -> str:
    """Equal for two processes exactly when 127.0.0.1 connects them: the same kernel (boot id) and the same
    network namespace. Elsewhere than Linux, the hostname."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
        return f"{boot_id}/{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return socket.gethostname()


def on_one_node(comm) -> bool:
    """Collective: every rank of `comm` must call it."""
    return len(set(comm.allgather(node_identity()))) == 1


# ---------------------------------------------------------------------------- the address


def choose_host_address(single_node: bool, env=os.environ, hostname: str | None = None) -> str:
    """127.0.0.1 on one node, else the override (APR_HOST_ADDR, APR_SOCKET_IFNAME), else the hostname's address."""
    if single_node:
        return LOOPBACK
    if env.get(HOST_ADDR_ENV):
        return _checked_ipv4(env[HOST_ADDR_ENV])
    if env.get(IFNAME_ENV):
        return interface_address(env[IFNAME_ENV])
    hostname = hostname or socket.gethostname()
    addresses = resolved_addresses(hostname)
    reachable = [address for address in addresses if not ipaddress.ip_address(address).is_loopback]
    if not reachable:
        found = ", ".join(addresses) or "nothing"
        raise UserError(f"this job spans several nodes, but hostname {hostname!r} resolves to {found}, which other "
                        f"nodes cannot reach; {_OVERRIDES}")
    return reachable[0]


def _checked_ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise UserError(f"{HOST_ADDR_ENV}={value!r} is not an IPv4 address; give this node's address, e.g. 10.0.0.5, "
                        f"or set {IFNAME_ENV} to an interface name instead") from None


def resolved_addresses(hostname: str) -> list[str]:
    """The IPv4 addresses `hostname` resolves to, in the resolver's order (IPv4: the stores' URLs are host:port)."""
    try:
        infos = socket.getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


def interface_address(name: str) -> str:
    """The IPv4 address of network interface `name` (read with an ioctl: no traffic)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", name.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24])
        except OSError:
            names = ", ".join(n for _, n in socket.if_nameindex())
            raise UserError(f"network interface {name!r} ({IFNAME_ENV}) has no IPv4 address or does not exist; "
                            f"this node has {names}") from None


def interface_of(address: str) -> str | None:
    """The name of the interface that holds `address`, if one of this node's does."""
    for _, name in socket.if_nameindex():
        try:
            if interface_address(name) == address:
                return name
        except UserError:
            continue
    return None


# ---------------------------------------------------------------------------- what other libraries listen on


def keep_listeners_on(address: str, env=os.environ) -> None:
    """gloo opens its own listeners for its pairs, on the interface GLOO_SOCKET_IFNAME names, else on whatever the
    hostname resolves to; NCCL's bootstrap listens on NCCL_SOCKET_IFNAME's, else on the first non-loopback interface.
    Point them at the interface holding `address`, unless the user chose one. NCCL only on one node: across nodes its
    own choice (InfiniBand, the fastest interface) is better than ours. Children (the inference servers) inherit it."""
    name = interface_of(address)
    if name is None:
        return
    env.setdefault("GLOO_SOCKET_IFNAME", name)
    if address == LOOPBACK:
        env.setdefault("NCCL_SOCKET_IFNAME", name)


def agree_on_host_address(comm) -> str:
    """Collective over `comm`: this rank's address (see the module's docstring), with gloo and NCCL kept on it.
    A rank that cannot choose one stops every rank with its message, rather than leaving the others waiting."""
    try:
        address, problem = choose_host_address(on_one_node(comm)), None
    except UserError as e:
        address, problem = None, f"{socket.gethostname()}: {e}"
    problems = [p for p in comm.allgather(problem) if p]
    if problems:
        raise UserError(problems[0])
    keep_listeners_on(address)
    return address


# ---------------------------------------------------------------------------- the MPI runtime's own listeners


# Resource managers whose allocation hydra's mpiexec spreads `-n N` over: then the ranks may be on several nodes.
_ALLOCATION_ENV = ("HYDRA_HOST_FILE", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "PBS_NODEFILE", "LSB_MCPU_HOSTS",
                   "PE_HOSTFILE", "COBALT_NODEFILE", "LOADL_HOSTFILE")


def loopback_mpi_env(env=os.environ) -> dict[str, str]:
    """Environment for an `mpiexec -n N` that starts every rank on this machine, so that MPICH's UCX netmod
    listens on loopback only (it listens on every interface's address otherwise). Empty where hydra may place
    ranks on other nodes, or where the user chose UCX's devices. MPICH's ofi netmod would need
    FI_PROVIDER=tcp FI_TCP_IFACE=lo instead; hydra's own control port always listens on 0.0.0.0."""
    if any(name in env for name in _ALLOCATION_ENV) or "UCX_NET_DEVICES" in env:
        return {}
    return {"UCX_NET_DEVICES": interface_of(LOOPBACK) or "lo"}
