"""store_kv: scatter new tokens' K/V into the paged cache (layout in docs/CONTRACTS.md)."""
import triton
import triton.language as tl

from ._common import launch, memoized, next_pow2, same_device, use_triton


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    sk_t, sk_h, sk_d, sv_t, sv_h, sv_d,
    skc_b, skc_o, skc_h, skc_d, svc_b, svc_o, svc_h, svc_d,
    H, D, BS,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per token: all kv heads of the token move in one [H, D] tile.
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        blk = slot // BS
        off = slot % BS
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        m = (h < H) & (d < D)
        kk = tl.load(k_ptr + t * sk_t + h * sk_h + d * sk_d, mask=m)
        vv = tl.load(v_ptr + t * sv_t + h * sv_h + d * sv_d, mask=m)
        tl.store(kc_ptr + blk * skc_b + off * skc_o + h * skc_h + d * skc_d, kk.to(kc_ptr.dtype.element_ty), mask=m)
        tl.store(vc_ptr + blk * svc_b + off * svc_o + h * svc_h + d * svc_d, vv.to(vc_ptr.dtype.element_ty), mask=m)


def store_kv_ref(k, v, k_cache, v_cache, slot_mapping, memo: dict | None = None):
    """Reference (and CPU path): index_put on the (strided) cache views; slots < 0 are skipped.
    memo: a dict that lives for one forward; the slots' (block, offset) are worked out once in it."""
    def coordinates():
        keep = slot_mapping >= 0
        slots = slot_mapping[keep]
        return None if bool(keep.all()) else keep, slots // k_cache.shape[1], slots % k_cache.shape[1]
    keep, blk, off = memoized(memo, "kv_slots", coordinates)
    k_cache[blk, off] = (k if keep is None else k[keep]).to(k_cache.dtype)
    v_cache[blk, off] = (v if keep is None else v[keep]).to(v_cache.dtype)


def store_kv_triton(k, v, k_cache, v_cache, slot_mapping):
    T, H, D = k.shape
    if T == 0:
        return
    assert k_cache.shape[2] == H and k_cache.shape[3] == D and v_cache.shape == k_cache.shape
    slot_mapping = slot_mapping.contiguous()
    launch(
        _store_kv_kernel, (T,), k, v, k_cache, v_cache, slot_mapping,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        H, D, k_cache.shape[1],
        BLOCK_H=next_pow2(H), BLOCK_D=next_pow2(D),
        num_warps=1 if H * D <= 512 else 4,
    )


def store_kv(k, v, k_cache, v_cache, slot_mapping, memo=None):
    """k, v: [T, Hkv, D]; k_cache, v_cache: [num_blocks, BS, Hkv, D] (any strides); slot_mapping: [T] int64.
    memo: a dict that lives for one forward (the CPU path keeps the slots' coordinates there)."""
    same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if use_triton(k, k_cache):
        store_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    else:
        store_kv_ref(k, v, k_cache, v_cache, slot_mapping, memo)
