"""GPU placement on one node (apr_ds/cluster/placement.py): learners first, one device each, then each server its own
tp_size devices, from the list the node was given; and the weight group's layout with tensor-parallel servers."""

import subprocess
import sys

import pytest

from apr_ds.cluster.placement import (node_devices, parse_visible_devices, plan_node, tp_size_from_server_args,
                                   visible_devices_value, weight_group_layout)
from apr_ds.errors import UserError

TWO_LEARNERS_THREE_SERVERS = [(0, "learner"), (1, "learner"), (2, "rollout"), (3, "rollout"), (4, "rollout")]


def test_mpiexec_on_one_8_gpu_node_two_learners_and_three_tp2_servers():
    plan = plan_node(TWO_LEARNERS_THREE_SERVERS, tp_size=2, device_count=8)
    assert plan == {0: ["0"], 1: ["1"], 2: ["2", "3"], 3: ["4", "5"], 4: ["6", "7"]}
    assert visible_devices_value(plan[3]) == "4,5"


def test_devices_come_from_the_given_subset_never_counted_from_zero():
    ranks = [(0, "learner"), (1, "rollout"), (2, "rollout")]
    plan = plan_node(ranks, tp_size=1, device_count=8, cuda_visible_devices="2,3,6,7")
    assert plan == {0: ["2"], 1: ["3"], 2: ["6"]}  # device_count is ignored once a list is given


def test_learners_come_first_whatever_the_order_of_the_ranks():
    # rank ids need not be 0..n-1 on a node (a second node holds ranks 4..7), nor arrive sorted
    plan = plan_node([(7, "rollout"), (5, "learner"), (6, "rollout"), (4, "learner")], tp_size=1, device_count=4)
    assert plan == {4: ["0"], 5: ["1"], 6: ["2"], 7: ["3"]}


def test_no_device_is_shared():
    plan = plan_node(TWO_LEARNERS_THREE_SERVERS, tp_size=2, device_count=8, cuda_visible_devices="0,1,2,3,4,5,6,7,8")
    handed_out = [device for devices in plan.values() for device in devices]
    assert len(handed_out) == len(set(handed_out)) == 8


def test_too_few_devices_names_the_rank_the_node_the_list_and_who_holds_them():
    with pytest.raises(UserError) as caught:
        plan_node([(0, "learner"), (1, "learner"), (2, "rollout"), (3, "rollout")], tp_size=2, device_count=8,
                  cuda_visible_devices="2,3,6,7", node="g1")
    message = str(caught.value)
    assert "rollout rank 3 needs 2 GPUs for --tp-size 2" in message
    assert "node g1 has 4 GPUs visible (CUDA_VISIBLE_DEVICES=2,3,6,7)" in message
    assert "its 2 learners take 2 and rollout rank 2 takes 2" in message
    assert "lower --tp-size" in message  # and says what to change


def test_too_few_devices_for_the_learners():
    with pytest.raises(UserError, match=r"learner rank 2 needs a GPU.*node g1 has 2 GPUs visible, of which its 2 "
                                        r"learners take 2; start fewer learner ranks"):
        plan_node([(0, "learner"), (1, "learner"), (2, "learner")], tp_size=1, device_count=2, node="g1")


def test_tp_size_defaults_to_1_and_is_read_in_every_spelling():
    assert tp_size_from_server_args([]) == 1
    assert tp_size_from_server_args(["--mem-fraction-static", "0.6", "--random-seed", "3"]) == 1
    assert tp_size_from_server_args(["--tp-size", "2"]) == 2
    assert tp_size_from_server_args(["--tp", "4"]) == 4
    assert tp_size_from_server_args(["--tensor-parallel-size", "8"]) == 8
    assert tp_size_from_server_args(["--tp-size=2", "--schedule-policy", "lpm"]) == 2
    assert tp_size_from_server_args(["--tp-size", 2]) == 2  # YAML's [--tp-size, 2] gives an int
    assert tp_size_from_server_args(["--tp-size", "2", "--tp", "4"]) == 4  # the last wins, as in argparse
    assert tp_size_from_server_args(["--tp-sizes", "2"]) == 1  # another flag


@pytest.mark.parametrize("args", [["--tp-size"], ["--tp-size", "two"], ["--tp=0"], ["--tp-size", "-2"]])
def test_a_bad_tp_size_is_a_user_error_naming_the_flag(args):
    with pytest.raises(UserError, match=r"rl.server_args: --tp(-size)? needs a whole number >= 1"):
        tp_size_from_server_args(args)


def test_tp_1_gives_each_server_one_device():
    plan = plan_node([(0, "learner"), (1, "rollout"), (2, "rollout")], tp_size=tp_size_from_server_args([]),
                     device_count=3)
    assert plan == {0: ["0"], 1: ["1"], 2: ["2"]}


def test_uuid_lists_are_handed_out_as_uuids():
    uuids = "GPU-aaaa-1111, GPU-bbbb-2222,MIG-cccc-3333/1/0"
    plan = plan_node([(0, "learner"), (1, "rollout")], tp_size=2, cuda_visible_devices=uuids)
    assert plan == {0: ["GPU-aaaa-1111"], 1: ["GPU-bbbb-2222", "MIG-cccc-3333/1/0"]}
    assert visible_devices_value(plan[1]) == "GPU-bbbb-2222,MIG-cccc-3333/1/0"


def test_cpu_gives_every_rank_nothing_to_set():
    for visible in (None, ""):  # no GPU counted, or CUDA_VISIBLE_DEVICES set empty
        plan = plan_node(TWO_LEARNERS_THREE_SERVERS, tp_size=2, device_count=0, cuda_visible_devices=visible)
        assert plan == {rank: [] for rank, _ in TWO_LEARNERS_THREE_SERVERS}
        assert {visible_devices_value(devices) for devices in plan.values()} == {None}


def test_parsing_cuda_visible_devices():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices(" 2, 3,6 ,7 ") == ["2", "3", "6", "7"]
    assert node_devices(3) == ["0", "1", "2"]
    assert node_devices(8, "4,5") == ["4", "5"]
    with pytest.raises(UserError, match="names 3 more than once"):
        parse_visible_devices("2,3,3")


def test_caller_mistakes_are_not_user_errors():
    with pytest.raises(ValueError, match="listed twice"):
        plan_node([(0, "learner"), (0, "rollout")], device_count=2)
    with pytest.raises(ValueError, match="role 'server'"):
        plan_node([(0, "server")], device_count=2)


def test_weight_group_layout_leaves_room_for_every_tp_rank():
    assert weight_group_layout(3, 1) == (4, [1, 2, 3])
    assert weight_group_layout(3, 2) == (7, [1, 3, 5])
    world, offsets = weight_group_layout(4, 4)
    members = [0] + [offset + tp_rank for offset in offsets for tp_rank in range(4)]
    assert sorted(members) == list(range(world))  # every rank once, none beyond the world
    with pytest.raises(ValueError):
        weight_group_layout(2, 0)


def test_importing_placement_loads_neither_torch_nor_cuda():
    code = "import sys, apr_ds.cluster.placement; print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
