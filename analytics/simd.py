"""Explicit vector code for the detector kernel (``analytics.kernel``) where numba's loops do not vectorize.

The kernel holds a batch of meters as [buckets x 32 meters] blocks, so that a step along time is one vector
operation across the meters. What numba does not generate from loops:
- moving a batch between that layout and the matrix's [meters x buckets] rows (16 x 16 transposes in registers:
  2.4x faster than element copies);
- chains of dependent steps along time kept in vector registers (the running sum and EWMA of z, the trailing
  mean and the sustained mask: a third of the CPU of four scalar chains side by side);
- the first stages of a sorting network in registers (through memory every comparator stores two rows, and
  stores are what a network waits on);
- medians of a hundred values and more, per meter, found by their bits with byte compares (a 256-bit vector
  holds a byte of all 32 meters): 32 rounds of a compare and an add per value instead of a network;
- passes that also note, per meter, whether any bucket is a candidate (missing, zero, out of range, spike,
  waste): the answer stays in a register, where a loop of numba's would load and store it at every bucket;
- a row of 32 floats as one vector, where a loop of 32 would be unrolled and left scalar; prefetches.
Each is LLVM IR emitted through ``numba.extending.intrinsic``; the arithmetic is the scalar code's, operation for
operation, with no fast-math flags, so results are bit-identical (``tests/test_detect_kernel.py`` checks them
against plain loops and the numpy reference).

numba keys its on-disk cache of the kernel to ``analytics/kernel.py`` alone; the kernel drops that cache itself
when this module or ``analytics/networks.py`` changed (``kernel._forget_stale_cache``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from analytics.networks import BLOCK, SMALL_BLOCK, sorting_network

LANES = 32  # meters per batch: two AVX-512 vectors of float32 (64 measured no faster)
_I64 = ir.IntType(64)


def _row(builder: Any, arr: Any, off: Any, vty: Any) -> Any:
    """A pointer to the elements of a C-contiguous array from flat offset ``off`` on, as one vector."""
    return builder.bitcast(builder.gep(arr.data, [off]), vty.as_pointer())


def _lane_row(builder: Any, arr: Any, r: Any, vty: Any) -> Any:
    """A pointer to row r of a C-contiguous [rows, LANES] array, as one vector."""
    return _row(builder, arr, builder.mul(r, ir.Constant(_I64, LANES)), vty)


def _arrays(context: Any, builder: Any, signature: Any, args: Any) -> list[Any]:
    """An intrinsic's arguments, the arrays among them as numba's array structs (``.data``, ``.shape``)."""
    return [context.make_array(ty)(context, builder, a) if isinstance(ty, types.Array) else a
            for ty, a in zip(signature.args, args, strict=True)]


def _or_flags(builder: Any, arr: Any, flags: Any) -> None:
    """arr[:LANES] |= flags: a bool array of the batch's meters takes a vector of i1 found in registers."""
    i8v = ir.VectorType(ir.IntType(8), LANES)
    out = builder.bitcast(builder.gep(arr.data, [ir.Constant(_I64, 0)]), i8v.as_pointer())
    builder.store(builder.or_(builder.load(out, align=1), builder.zext(flags, i8v)), out, align=1)


def _butterfly(b: int) -> tuple[list[int], list[int]]:
    """Shuffle masks of one stage of a 16 x 16 transpose: rows i and i + b swap their off-diagonal b-blocks."""
    lo, hi = [], []
    for e in range(16):
        g, off = divmod(e, 2 * b)
        lo.append(g * 2 * b + off if off < b else 16 + g * 2 * b + off - b)
        hi.append(g * 2 * b + b + off if off < b else 16 + g * 2 * b + off)
    return lo, hi


@intrinsic
def transpose16(typingctx: Any, src: Any, src_off: Any, src_stride: Any, dst: Any, dst_off: Any,
                dst_stride: Any) -> Any:
    """dst[dst_off + c * dst_stride + r] = src[src_off + r * src_stride + c] for r, c < 16 (flat float32 arrays)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == types.float32 and dst.dtype == types.float32):
        return None
    sig = types.void(src, src_off, src_stride, dst, dst_off, dst_stride)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        s = context.make_array(signature.args[0])(context, builder, args[0])
        d = context.make_array(signature.args[3])(context, builder, args[3])
        vty = ir.VectorType(ir.FloatType(), 16)
        mty = ir.VectorType(ir.IntType(32), 16)

        def ptr(arr: Any, off: Any, stride: Any, r: int) -> Any:
            return _row(builder, arr, builder.add(off, builder.mul(stride, ir.Constant(_I64, r))), vty)

        rows = [builder.load(ptr(s, args[1], args[2], r), align=4) for r in range(16)]
        for b in (8, 4, 2, 1):
            lo, hi = _butterfly(b)
            new = list(rows)
            for i in range(16):
                if i & b == 0:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(mty, lo))
                    new[i + b] = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(mty, hi))
            rows = new
        for r in range(16):
            builder.store(rows[r], ptr(d, args[4], args[5], r), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sustained_lanes(typingctx: Any, zt: Any, cst: Any, cnt: Any, levelt: Any, shortt: Any, sust: Any, anyt: Any,
                    par: Any, window: Any) -> Any:
    """Step and drift statistics of 32 meters side by side, one vector step per bucket.

    ``zt`` [t, 32] float32 z; out: ``levelt`` [t, 32] float32 the EWMA of the clipped z, ``shortt`` [t, 32] float32
    its mean over the trailing ``window`` buckets (0 where none), ``sust`` [t, 32] bool: ``|short| > step_z`` or
    ``|level| > drift_z``. ``cst`` float64 and ``cnt`` int32 ([window + 1 or more, 32]) are scratch: a ring of the
    running sum and count of the last window + 1 buckets, so they stay in the L1 cache.
    ``par`` [5, 32] float32: clip, alpha, keep (1 - alpha), step_z, drift_z. NaN z is no news: nothing moves.
    """
    sig = types.void(zt, cst, cnt, levelt, shortt, sust, anyt, par, window)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        z, cs, cn, lv, sh, su, an, pr, win = _arrays(context, builder, signature, args)
        n = LANES
        f32v = ir.VectorType(ir.FloatType(), n)
        f64v = ir.VectorType(ir.DoubleType(), n)
        i32v = ir.VectorType(ir.IntType(32), n)
        i8v = ir.VectorType(ir.IntType(8), n)
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32v, [f32v]), f"llvm.fabs.v{n}f32")

        def load(arr: Any, r: Any, vty: Any) -> Any:
            return builder.load(_lane_row(builder, arr, r, vty), align=4)

        def store(v: Any, arr: Any, r: Any, vty: Any) -> None:
            builder.store(v, _lane_row(builder, arr, r, vty), align=4)

        t = builder.extract_value(z.shape, 0)
        clip, alpha, keep, step_z, drift_z = (load(pr, ir.Constant(_I64, k), f32v) for k in range(5))
        nclip = builder.fneg(clip)
        zero64, zero32, zeroi = ir.Constant(f64v, None), ir.Constant(f32v, None), ir.Constant(i32v, None)
        acc = cgutils.alloca_once_value(builder, zero64)
        cnt_ = cgutils.alloca_once_value(builder, zeroi)
        lev = cgutils.alloca_once_value(builder, zero32)
        seen = cgutils.alloca_once_value(builder, ir.Constant(i8v, None))
        store(zero64, cs, ir.Constant(_I64, 0), f64v)
        store(zeroi, cn, ir.Constant(_I64, 0), i32v)
        ring = builder.add(win, ir.Constant(_I64, 1))
        slot = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))  # the ring's row of bucket i (row 0: none)

        def after(r: Any) -> Any:
            nxt = builder.add(r, ir.Constant(_I64, 1))
            return builder.select(builder.icmp_signed("==", nxt, ring), ir.Constant(_I64, 0), nxt)

        with cgutils.for_range(builder, t) as loop:
            i = loop.index
            i1 = builder.add(i, ir.Constant(_I64, 1))
            zv = load(z, i, f32v)
            ok = builder.fcmp_ordered("ord", zv, zv)
            low = builder.select(builder.fcmp_ordered(">", zv, nclip), zv, nclip)  # min(max(z, -clip), clip)
            zc = builder.select(builder.fcmp_ordered("<", low, clip), low, clip)
            a = builder.fadd(builder.load(acc), builder.select(ok, builder.fpext(zc, f64v), zero64))
            k = builder.add(builder.load(cnt_), builder.zext(ok, i32v))
            old = builder.load(lev)
            level = builder.select(ok, builder.fadd(builder.fmul(old, keep), builder.fmul(alpha, zc)), old)
            builder.store(a, acc)
            builder.store(k, cnt_)
            builder.store(level, lev)
            here = after(builder.load(slot))
            builder.store(here, slot)
            store(a, cs, here, f64v)
            store(k, cn, here, i32v)
            store(level, lv, i, f32v)
            # the sums of bucket i - window: the ring's next row (written window + 1 buckets ago), or none yet
            j = builder.select(builder.icmp_signed(">", i1, win), after(here), ir.Constant(_I64, 0))
            count = builder.sub(k, load(cn, j, i32v))
            mean = builder.fptrunc(builder.fdiv(builder.fsub(a, load(cs, j, f64v)), builder.sitofp(count, f64v)),
                                   f32v)
            short = builder.select(builder.icmp_signed(">", count, zeroi), mean, zero32)
            store(short, sh, i, f32v)
            big = builder.or_(builder.fcmp_ordered(">", builder.call(fabs, [short]), step_z),
                              builder.fcmp_ordered(">", builder.call(fabs, [level]), drift_z))
            flag = builder.zext(big, i8v)
            store(flag, su, i, i8v)
            builder.store(builder.or_(builder.load(seen), flag), seen)
        store(builder.load(seen), an, ir.Constant(_I64, 0), i8v)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_lanes_inf(typingctx: Any, src: Any, src_off: Any, dst: Any, dst_off: Any) -> Any:
    """dst[dst_off:dst_off + 32] = src[src_off:src_off + 32] with NaN as +inf (flat float32 arrays): one row of a
    batch into a sorting block, where a missing value must sort last. A loop of 32 would be unrolled and left
    scalar (see ``analytics.kernel``)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == types.float32 and dst.dtype == types.float32):
        return None
    sig = types.void(src, src_off, dst, dst_off)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        s = context.make_array(signature.args[0])(context, builder, args[0])
        d = context.make_array(signature.args[2])(context, builder, args[2])
        vty = ir.VectorType(ir.FloatType(), LANES)
        v = builder.load(_row(builder, s, args[1], vty), align=4)
        v = builder.select(builder.fcmp_unordered("uno", v, v), ir.Constant(vty, [float("inf")] * LANES), v)
        builder.store(v, _row(builder, d, args[3], vty), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _block_sorter(rows: int) -> Any:
    """``sort_blocks(block, nblocks, col0, width)``: sort ascending, down each column, every aligned block of
    ``rows`` rows among the first nblocks * rows rows of columns col0 .. col0 + width - 1 (width a multiple of 16)
    of a C-contiguous float32 [rows, cols] block.

    Per block and 16 columns: the rows loaded as vectors, Batcher's network for them applied in registers, the
    rows stored. Each comparator is the kernel's: the smaller value (``a if a < b else b``) to the upper row.
    """
    comparators = sorting_network(rows)

    @intrinsic
    def sort_blocks(typingctx: Any, block: Any, nblocks: Any, col0: Any, width: Any) -> Any:
        if not (isinstance(block, types.Array) and block.dtype == types.float32 and block.ndim == 2):
            return None
        sig = types.void(block, nblocks, col0, width)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            b = context.make_array(signature.args[0])(context, builder, args[0])
            stride = builder.extract_value(b.shape, 1)
            vty = ir.VectorType(ir.FloatType(), 16)
            groups = builder.sdiv(args[3], ir.Constant(_I64, 16))
            with cgutils.for_range(builder, args[1]) as blocks:
                top = builder.mul(builder.mul(blocks.index, ir.Constant(_I64, rows)), stride)
                with cgutils.for_range(builder, groups) as cols:
                    base = builder.add(top, builder.add(args[2], builder.mul(cols.index, ir.Constant(_I64, 16))))
                    ptrs = [_row(builder, b, builder.add(base, builder.mul(stride, ir.Constant(_I64, r))), vty)
                            for r in range(rows)]
                    values = [builder.load(ptr, align=4) for ptr in ptrs]
                    for i, j in comparators:
                        less = builder.fcmp_ordered("<", values[i], values[j])
                        values[i], values[j] = (builder.select(less, values[i], values[j]),
                                                builder.select(less, values[j], values[i]))
                    for ptr, value in zip(ptrs, values, strict=True):
                        builder.store(value, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return sort_blocks


sort_blocks16 = _block_sorter(BLOCK)
sort_blocks8 = _block_sorter(SMALL_BLOCK)


@intrinsic
def prefetch(typingctx: Any, arr: Any, start: Any, count: Any, write: Any) -> Any:
    """Ask the CPU to fetch elements start .. start + count - 1 of flat array ``arr`` into its L2 cache (for a
    write if ``write``, a compile-time constant), one request per 64-byte line, without waiting for them.

    The kernel reads the next batch's rows and writes its output rows while the current batch still computes:
    out of DRAM each would otherwise stall the core for the whole round trip.
    """
    if not (isinstance(arr, types.Array) and isinstance(write, types.BooleanLiteral)):
        return None
    sig = types.void(arr, start, count, write)
    rw = int(write.literal_value)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        size = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        base = builder.bitcast(builder.gep(a.data, [args[1]]), i8p)
        nbytes = builder.mul(args[2], ir.Constant(_I64, size))
        lines = builder.udiv(builder.add(nbytes, ir.Constant(_I64, 63)), ir.Constant(_I64, 64))
        with cgutils.for_range(builder, lines) as loop:
            ptr = builder.gep(base, [builder.mul(loop.index, ir.Constant(_I64, 64))])
            builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def median_lanes(typingctx: Any, block: Any, rows: Any, keys: Any, out: Any) -> Any:
    """out[c] = median of the values v >= 0 in column c of rows ``rows`` of ``block`` [*, 32] float32 (NaN and
    negatives are no value), as (lower middle + upper middle) / 2; NaN where none.

    The lower middle is found by its bits, most significant first, for all 32 columns at once. Each value's
    bits, made an unsigned key in the values' order, are cut into four bytes, so that one 256-bit vector holds
    a byte of the 32 columns; byte by byte, among the keys that share the bytes found so far, the answer grows
    one bit a round while no more than its rank of keys are at most the candidate. 32 rounds of one compare and
    one add per value (bytes counted in runs of 255 rows) replace a sorting network's comparators, each of which
    stores two rows. The upper middle is then the lower one again, or the smallest key above it. ``keys``
    [5 x rows or more, 32] int8 is scratch. The result is a value of the column, as a network's would be (only
    -0.0 and 0.0, equal, may trade places).
    """
    sig = types.void(block, rows, keys, out)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        blk, idx, ks, o = _arrays(context, builder, signature, args)
        n = LANES
        f32v = ir.VectorType(ir.FloatType(), n)
        i32v = ir.VectorType(ir.IntType(32), n)
        i8v = ir.VectorType(ir.IntType(8), n)

        def splat(value: int, vty: Any = i32v) -> Any:
            return ir.Constant(vty, [value] * n)

        def const(value: int) -> Any:
            return ir.Constant(_I64, value)

        row = partial(_lane_row, builder)
        size = builder.extract_value(idx.shape, 0)

        def byte_row(region: int, j: Any) -> Any:
            """Row j of region 0..3 of ``keys`` (the key's bytes, most significant first), 4 (who still counts)."""
            return row(ks, builder.add(builder.mul(const(region), size), j), i8v)

        top = splat(-(2**31))

        def key_of(j: Any) -> tuple[Any, Any]:
            """The key of each column at row j of ``rows`` (the sign bit flipped; no value: the largest key)."""
            v = builder.load(row(blk, builder.load(builder.gep(idx.data, [j])), f32v), align=4)
            valid = builder.fcmp_ordered(">=", v, ir.Constant(f32v, None))
            return builder.select(valid, builder.xor(builder.bitcast(v, i32v), top), splat(-1)), valid

        # bytes are stored with their top bit flipped too, so that signed byte compares order them as unsigned
        flip8 = splat(-128, i8v)
        count = cgutils.alloca_once_value(builder, splat(0))
        with cgutils.for_range(builder, size) as loop:
            key, valid = key_of(loop.index)
            builder.store(builder.sub(builder.load(count), builder.sext(valid, i32v)), count)
            for region in range(4):
                byte = builder.trunc(builder.lshr(key, splat(24 - 8 * region)), i8v)
                builder.store(builder.xor(byte, flip8), byte_row(region, loop.index), align=1)
            builder.store(splat(-1, i8v), byte_row(4, loop.index), align=1)
        total = builder.load(count)
        k_lo = builder.ashr(builder.sub(total, splat(1)), splat(1))  # the lower middle's rank
        k_hi = builder.ashr(total, splat(1))

        runs = builder.udiv(builder.add(size, const(254)), const(255))

        def tally(region: int, pred: str, limit: Any) -> Any:
            """How many bytes of each column in ``region`` are ``pred`` limit (signed): counted in bytes over
            runs of 255 rows."""
            acc = cgutils.alloca_once_value(builder, splat(0))
            with cgutils.for_range(builder, runs) as run:
                start = builder.mul(run.index, const(255))
                stop = builder.add(start, const(255))
                stop = builder.select(builder.icmp_signed("<", size, stop), size, stop)
                part = cgutils.alloca_once_value(builder, splat(0, i8v))
                with cgutils.for_range_slice(builder, start, stop, const(1)) as (j, _):
                    hit = builder.icmp_signed(pred, builder.load(byte_row(region, j), align=1), limit)
                    builder.store(builder.sub(builder.load(part), builder.sext(hit, i8v)), part)
                builder.store(builder.add(builder.load(acc), builder.zext(builder.load(part), i32v)), acc)
            return builder.load(acc)

        rank = k_lo
        lower = splat(0)
        one = builder.insert_element(ir.Constant(i32v, ir.Undefined), builder.trunc(size, ir.IntType(32)),
                                     ir.Constant(ir.IntType(32), 0))
        everyone = builder.shuffle_vector(one, one, ir.Constant(i32v, None))
        found = splat(0, i8v)  # the byte found in the region before, flipped
        excluded = splat(127, i8v)  # larger than any candidate: a byte whose key no longer counts
        for region in range(4):
            if region:  # keys whose bytes so far are the answer's go on counting; the others never again
                with cgutils.for_range(builder, size) as loop:
                    same = builder.icmp_signed("==", builder.load(byte_row(region - 1, loop.index), align=1), found)
                    still = builder.and_(builder.load(byte_row(4, loop.index), align=1), builder.sext(same, i8v))
                    builder.store(still, byte_row(4, loop.index), align=1)
                    here = byte_row(region, loop.index)
                    builder.store(builder.select(builder.icmp_signed("!=", still, splat(0, i8v)),
                                                 builder.load(here, align=1), excluded), here, align=1)
            ans = cgutils.alloca_once_value(builder, splat(0, i8v))  # the byte, unflipped
            for b in range(7, -1, -1):
                low = builder.load(ans)
                candidate = builder.xor(builder.or_(low, splat((1 << b) - 1, i8v)), flip8)
                below = builder.sub(everyone, tally(region, ">", candidate))  # keys still counted, at most it
                builder.store(builder.select(builder.icmp_signed("<=", below, rank),
                                             builder.or_(low, splat(1 << b, i8v)), low), ans)
            found = builder.xor(builder.load(ans), flip8)
            rank = builder.sub(rank, tally(region, "<", found))
            lower = builder.or_(lower, builder.shl(builder.zext(builder.load(ans), i32v), splat(24 - 8 * region)))

        at_most = cgutils.alloca_once_value(builder, splat(0))
        above = cgutils.alloca_once_value(builder, splat(-1))  # the smallest key above the lower middle
        with cgutils.for_range(builder, size) as loop:
            key, _ = key_of(loop.index)
            builder.store(builder.sub(builder.load(at_most), builder.sext(builder.icmp_unsigned("<=", key, lower),
                                                                          i32v)), at_most)
            best = builder.load(above)
            better = builder.and_(builder.icmp_unsigned(">", key, lower), builder.icmp_unsigned("<", key, best))
            builder.store(builder.select(better, key, best), above)
        upper = builder.select(builder.icmp_signed(">", builder.load(at_most), k_hi), lower,
                               builder.load(above))

        def value(key: Any) -> Any:
            return builder.bitcast(builder.xor(key, top), f32v)

        med = builder.fmul(builder.fadd(value(lower), value(upper)), ir.Constant(f32v, [0.5] * n))
        med = builder.select(builder.icmp_signed(">", total, splat(0)), med,
                             ir.Constant(f32v, [float("nan")] * n))
        builder.store(med, row(o, const(0), f32v), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def any_waste(typingctx: Any, xt: Any, cols: Any, col_kind: Any, level: Any, limit: Any, found: Any) -> Any:
    """found[m] |= xt[i, m] - level[col_kind[i], m] > limit[col_kind[i], m] for any i of ``cols``: a batch's
    closed-hours columns against each kind's level and waste threshold ([kinds, 32] float32), 32 meters at
    once. The answer stays in a register: a loop of numba's would load and store ``found`` at every column."""
    sig = types.void(xt, cols, col_kind, level, limit, found)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        x, cs, ck, lv, lm, fd = _arrays(context, builder, signature, args)
        f32v = ir.VectorType(ir.FloatType(), LANES)
        seen = cgutils.alloca_once_value(builder, ir.Constant(ir.VectorType(ir.IntType(1), LANES), None))

        def load(arr: Any, r: Any) -> Any:
            return builder.load(_lane_row(builder, arr, r, f32v), align=4)

        with cgutils.for_range(builder, builder.extract_value(cs.shape, 0)) as loop:
            i = builder.load(builder.gep(cs.data, [loop.index]))
            k = builder.load(builder.gep(ck.data, [i]))
            over = builder.fcmp_ordered(">", builder.fsub(load(x, i), load(lv, k)), load(lm, k))
            builder.store(builder.or_(builder.load(seen), over), seen)
        _or_flags(builder, fd, builder.load(seen))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def clean_lanes(typingctx: Any, xt: Any, cell: Any, cube: Any, limit: Any, news: Any, odd: Any) -> Any:
    """A batch's readings ``xt`` [t, 32] float32 cleaned in place (NaN where missing, negative or above the
    meter's ``limit`` [32]) and each valid one also put in its cell ``cube[cell[i]]`` of the week grid.
    ``news[m]`` |= meter m missed a reading; ``odd[m]`` |= it read zero, or out of range: the batch's candidates
    of a gap, a flatline or a bad value, found on the way, the answers kept in registers."""
    sig = types.void(xt, cell, cube, limit, news, odd)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        x, cl, cb, lim, nw, od = _arrays(context, builder, signature, args)
        f32v = ir.VectorType(ir.FloatType(), LANES)
        b1v = ir.VectorType(ir.IntType(1), LANES)
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32v, [f32v]), f"llvm.fabs.v{LANES}f32")
        top = builder.load(_row(builder, lim, ir.Constant(_I64, 0), f32v), align=4)
        missed = cgutils.alloca_once_value(builder, ir.Constant(b1v, None))
        strange = cgutils.alloca_once_value(builder, ir.Constant(b1v, None))

        def ptr(arr: Any, r: Any) -> Any:
            return _lane_row(builder, arr, r, f32v)

        with cgutils.for_range(builder, builder.extract_value(x.shape, 0)) as loop:
            i = loop.index
            v = builder.load(ptr(x, i), align=4)
            ok = builder.and_(builder.fcmp_ordered(">=", v, ir.Constant(f32v, None)),
                              builder.fcmp_ordered("<=", v, top))
            builder.store(builder.select(ok, v, ir.Constant(f32v, [float("nan")] * LANES)), ptr(x, i), align=4)
            dst = ptr(cb, builder.load(builder.gep(cl.data, [i])))
            builder.store(builder.select(ok, v, builder.load(dst, align=4)), dst, align=4)
            missing = builder.fcmp_unordered("uno", v, v)
            zero = builder.fcmp_ordered("<", builder.call(fabs, [v]), ir.Constant(f32v, [1e-9] * LANES))
            builder.store(builder.or_(builder.load(missed), missing), missed)
            builder.store(builder.or_(builder.load(strange), builder.or_(builder.and_(ok, zero),
                                                                         builder.not_(builder.or_(ok, missing)))),
                          strange)
        _or_flags(builder, nw, builder.load(missed))
        _or_flags(builder, od, builder.load(strange))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def finite_lanes(typingctx: Any, zt: Any, spike: Any, odd: Any) -> Any:
    """``zt`` [t, 32] float32 with NaN as 0 and +-inf as the largest float (``np.nan_to_num``), in place;
    ``odd[m]`` |= some z of meter m is above its ``spike`` [32] threshold: a spike candidate, the answer kept in
    a register."""
    sig = types.void(zt, spike, odd)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        z, sp, od = _arrays(context, builder, signature, args)
        f32v = ir.VectorType(ir.FloatType(), LANES)
        big = ir.Constant(f32v, [float(np.finfo(np.float32).max)] * LANES)
        small = ir.Constant(f32v, [-float(np.finfo(np.float32).max)] * LANES)
        limit = builder.load(_row(builder, sp, ir.Constant(_I64, 0), f32v), align=4)
        seen = cgutils.alloca_once_value(builder, ir.Constant(ir.VectorType(ir.IntType(1), LANES), None))
        with cgutils.for_range(builder, builder.extract_value(z.shape, 0)) as loop:
            p = _lane_row(builder, z, loop.index, f32v)
            v = builder.load(p, align=4)
            v = builder.select(builder.fcmp_unordered("uno", v, v), ir.Constant(f32v, None), v)
            v = builder.select(builder.fcmp_ordered(">", v, big), big, v)
            v = builder.select(builder.fcmp_ordered("<", v, small), small, v)
            builder.store(v, p, align=4)
            builder.store(builder.or_(builder.load(seen), builder.fcmp_ordered(">", v, limit)), seen)
        _or_flags(builder, od, builder.load(seen))
        return context.get_dummy_value()

    return sig, codegen
