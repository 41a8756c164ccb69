"""A stand-in for `sgl_kernel` on CPU machines without AVX-512/AMX, for testing apr-ds against real SGLang.

PyPI has no CPU build of sgl-kernel (its wheels are CUDA-only), yet SGLang with `SGLANG_USE_CPU_ENGINE=1`
imports CPU ops from it when its modules load, with no pure-torch fallback:

- sglang/srt/mem_cache/allocation.py:46 imports `assign_req_to_token_pool_cpu`, called on every extend
  (allocation.py:746, `assign_req_to_token_pool_func`). Implemented below in plain torch.
- sglang/kernels/ops/kvcache/cache_move.py:10 (`copy_all_layer_kv_cache_cpu`) and
  sglang/kernels/ops/speculative/spec_tree.py:40-43 (`build_tree_kernel_efficient_cpu`,
  `verify_tree_greedy_cpu`) only import names; apr-ds never runs speculative decoding or a KV move, so
  those names exist here but raise if ever called, rather than computing something unchecked.
"""

from __future__ import annotations

import torch


def assign_req_to_token_pool_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor, out_cache_loc: torch.Tensor,
                                 pool_len: int) -> None:
    """Write each request's newly allocated KV slots into its row of the request->token table.

    The same semantics as SGLang's triton kernel `assign_req_to_token_pool` (allocation.py:692): request i owns
    row `req_pool_indices[i]` of `req_to_token` and gets positions [start_offset[i], end_offset[i]) filled from
    `out_cache_loc`, whose slots are laid out request after request. A loop of slice copies is exact: no
    arithmetic happens, only integer copies.
    """
    del pool_len  # the row length, needed by the kernel's pointer arithmetic only
    starts, ends = start_offset.tolist(), end_offset.tolist()
    rows = req_pool_indices.tolist()
    offset = 0
    for row, start, end in zip(rows, starts, ends):
        count = end - start
        req_to_token[row, start:end] = out_cache_loc[offset:offset + count].to(req_to_token.dtype)
        offset += count


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is not provided by apr-ds's CPU stand-in "
                                  f"(tools/sglang_cpu/sgl_kernel); only assign_req_to_token_pool_cpu is")
    unavailable.__name__ = name
    return unavailable
