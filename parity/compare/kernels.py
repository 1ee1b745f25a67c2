"""Triton kernels of parity.compare.fused (imported only when a CUDA tensor needs them)."""
import triton
import triton.language as tl

NDESC = tl.constexpr(11)  # int64 columns of a probe's descriptor, see parity.compare.fused.Arena


@triton.jit(do_not_specialize=["first0"])
def _rows_kernel(desc_ptr, addr_ptr, rec_ptr, first0, cand_base, ref_base,
                 HAS_REF: tl.constexpr, BLOCK: tl.constexpr, C_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr,
                 LEN_ALIGN: tl.constexpr, STAGES: tl.constexpr, CHUNK: tl.constexpr, C_SIZE: tl.constexpr,
                 R_SIZE: tl.constexpr):
    """Statistics of one (row, column tile) of one probe of a batch: program (q, p) reads its
    slice of probe p's candidate (and reference) once, accumulating per lane; lanes are
    reduced once at the end.

    Probe p is described by row p of ``desc_ptr`` (int64): programs (rows * tiles), tiles
    per row, row length, tile width, the reference's address, the candidate's and the
    reference's row strides, its first record (after ``first0``), and the float64 bits of
    atol, rtol and eps; ``addr_ptr[p]`` is the candidate's address. Addresses are turned
    into element offsets from ``cand_base`` (at ``addr_ptr[0]``) and ``ref_base`` (at
    probe 0's reference address), ``C_SIZE`` / ``R_SIZE`` bytes per element: the host keeps
    the tensors of a launch on that element grid. So a descriptor table stays valid from
    forward to forward, and only the candidates' addresses are new (see Arena.add_run).
    Programs past a probe's count do nothing (the grid is as wide as the widest probe).
    ``C_ALIGN``/``R_ALIGN``: every row start is a multiple of that many elements (16 bytes
    when the host saw so), ``LEN_ALIGN``: so is every row length; with both, loads are
    vectorized.

    Elementwise terms are float32 (the inputs are float32 or narrower; ref - cand is exact
    when the two are within a factor 2 of each other); products and sums are float64 (a
    product of two float32 values is exact there, which the per-token scale fit needs), and
    the worst element's error is recomputed in float64 from the stored values."""
    q = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64)
    dp = desc_ptr + p * NDESC
    if q < tl.load(dp):
        ntiles = tl.load(dp + 1).to(tl.int32)
        row = (q // ntiles).to(tl.int64)
        c_off = (tl.load(addr_ptr + p) - tl.load(addr_ptr)) // C_SIZE
        r_off = (tl.load(dp + 4) - tl.load(desc_ptr + 4)) // R_SIZE
        c_row = cand_base + tl.multiple_of(c_off + row * tl.load(dp + 5), C_ALIGN)
        r_row = ref_base + tl.multiple_of(r_off + row * tl.load(dp + 6), R_ALIGN)
        atol = tl.load(dp + 8).to(tl.float64, bitcast=True).to(tl.float32)
        rtol = tl.load(dp + 9).to(tl.float64, bitcast=True).to(tl.float32)
        eps = tl.load(dp + 10).to(tl.float64, bitcast=True).to(tl.float32)
        D = tl.load(dp + 2).to(tl.int32)  # the host keeps row lengths below 2**31
        TILE = tl.multiple_of(tl.load(dp + 3).to(tl.int32), BLOCK)
        _row_stats(rec_ptr + (first0 + tl.load(dp + 7) + q) * 16, c_row, r_row, q % ntiles, D, TILE, atol, rtol, eps,
                   HAS_REF, BLOCK, LEN_ALIGN, STAGES, CHUNK)


@triton.jit(do_not_specialize=["first"])
def _one_kernel(rec_ptr, cand_ptr, ref_ptr, tol_ptr, first, D, TILE, c_stride, r_stride,
                HAS_REF: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """The same statistics for one probe, described by arguments (no descriptor to copy to
    the device): program (row, tile). For probes launched one by one (ports, which may write
    captured tensors in place later). ``tol_ptr``: float64 [atol, rtol, eps]."""
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    out = rec_ptr + (first + row * tl.num_programs(1) + tile) * 16
    atol = tl.load(tol_ptr).to(tl.float32)
    rtol = tl.load(tol_ptr + 1).to(tl.float32)
    eps = tl.load(tol_ptr + 2).to(tl.float32)
    _row_stats(out, cand_ptr + row * c_stride, ref_ptr + row * r_stride, tile, D, TILE, atol, rtol, eps,
               HAS_REF, BLOCK, 1, 1, CHUNK)


@triton.jit
def _row_stats(out, c_row, r_row, tile, D, TILE, atol, rtol, eps,
               HAS_REF: tl.constexpr, BLOCK: tl.constexpr, LEN_ALIGN: tl.constexpr, STAGES: tl.constexpr,
               CHUNK: tl.constexpr):
    """Accumulate columns [tile * TILE, (tile + 1) * TILE) of one row and store its record:
    with a reference, first on the assumption that every value is finite (no NaN/Inf
    bookkeeping per element); a tile where that fails is read again with it."""
    if HAS_REF:
        if _finite_stats(out, c_row, r_row, tile, D, TILE, atol, rtol, eps, BLOCK, LEN_ALIGN, STAGES,
                         CHUNK) == 0:
            _row_stats_careful(out, c_row, r_row, tile, D, TILE, atol, rtol, eps, True, BLOCK, LEN_ALIGN, STAGES)
    else:
        _row_stats_careful(out, c_row, r_row, tile, D, TILE, atol, rtol, eps, False, BLOCK, LEN_ALIGN, STAGES)


@triton.jit
def _finite_stats(out, c_row, r_row, tile, D, TILE, atol, rtol, eps,
                  BLOCK: tl.constexpr, LEN_ALIGN: tl.constexpr, STAGES: tl.constexpr, CHUNK: tl.constexpr):
    """The record of :func:`_row_stats_careful` for a tile of finite values only: returns 1
    after storing it, or 0 (nothing stored) when the tile holds a NaN or an Inf.

    Products and their sums stay exact float64 (r * r, r * d and d * d of float32 values;
    dot and cc follow from them: c = r - d); the candidate's sum and the error sum add
    ``CHUNK`` steps in float32 first (relative error ~1e-7), which cuts the float64
    conversions per element from five to two. A NaN or Inf in the candidate makes the
    candidate sum non-finite, one in the reference makes r * r so: that is the test."""
    start = tile * TILE
    stop = tl.multiple_of(tl.minimum(start + TILE, D), LEN_ALIGN)
    lanes = tl.arange(0, BLOCK)
    csum = tl.zeros([BLOCK], tl.float64)
    err_sum = tl.zeros([BLOCK], tl.float64)
    cabs = tl.zeros([BLOCK], tl.float32)
    rr = tl.zeros([BLOCK], tl.float64)
    rd = tl.zeros([BLOCK], tl.float64)
    dd = tl.zeros([BLOCK], tl.float64)
    rel_max = tl.zeros([BLOCK], tl.float32)
    best = tl.full([BLOCK], -1.0, tl.float32)
    best_col = tl.zeros([BLOCK], tl.int32)
    n_bad = tl.zeros([BLOCK], tl.int32)
    for off in tl.range(start, stop, BLOCK * CHUNK, num_stages=STAGES):
        c_part = tl.zeros([BLOCK], tl.float32)
        e_part = tl.zeros([BLOCK], tl.float32)
        for k in tl.static_range(CHUNK):
            cols = off + k * BLOCK + lanes
            m = cols < stop
            c = tl.load(c_row + cols, mask=m, other=0.0).to(tl.float32)
            r = tl.load(r_row + cols, mask=m, other=0.0).to(tl.float32)
            d = r - c
            ad = tl.abs(d)
            ar = tl.abs(r)
            c_part += c
            e_part += ad
            cabs = tl.maximum(cabs, tl.abs(c))
            rel_max = tl.maximum(rel_max, ad / (ar + eps))
            n_bad += (ad > atol + rtol * ar).to(tl.int32)
            r64 = r.to(tl.float64)
            d64 = d.to(tl.float64)
            rr += r64 * r64
            rd += r64 * d64
            dd += d64 * d64
            better = m & (ad > best)  # strict: a lane keeps its first worst column
            best = tl.where(better, ad, best)
            best_col = tl.where(better, cols, best_col)
        csum += c_part.to(tl.float64)
        err_sum += e_part.to(tl.float64)
    s_c = tl.sum(csum, axis=0)
    s_rr = tl.sum(rr, axis=0)
    finite = (tl.abs(s_c) < float("inf")) & (s_rr < float("inf"))  # NaN compares false
    if finite:
        s_rd = tl.sum(rd, axis=0)
        s_dd = tl.sum(dd, axis=0)
        worst, col, w_ref, w_cand = _worst(best, best_col, start, stop, r_row, c_row)
        zero = tl.zeros([], tl.float64)
        _store_diff(out, tl.sum(err_sum, axis=0), tl.max(rel_max, axis=0), tl.sum(n_bad, axis=0), zero,
                    s_rr - s_rd, s_rr, s_rr - 2.0 * s_rd + s_dd, s_dd,  # sum r * c, sum r * r, sum c * c, sum d * d
                    tl.abs(w_ref - w_cand), col, w_ref, w_cand)
        _store_cand(out, s_c, tl.max(cabs, axis=0), zero, zero)
    return finite.to(tl.int32)


@triton.jit
def _worst(best, best_col, start, stop, r_row, c_row):
    """(worst error of a tile's lanes, its first column, the reference and candidate values
    there in float64)."""
    worst = tl.max(best, axis=0)
    col = tl.min(tl.where(best == worst, best_col, stop), axis=0)
    col = tl.minimum(tl.maximum(col, start), stop - 1)
    return worst, col, tl.load(r_row + col).to(tl.float64), tl.load(c_row + col).to(tl.float64)


@triton.jit
def _store_diff(out, err_sum, rel_max, n_bad, n_mis, dot, rr, cc, noise, w_err, col, w_ref, w_cand):
    """Slots 0-11 of a record (see _finalize_kernel), as float64."""
    tl.store(out + 0, err_sum.to(tl.float64))
    tl.store(out + 1, rel_max.to(tl.float64))
    tl.store(out + 2, n_bad.to(tl.float64))
    tl.store(out + 3, n_mis.to(tl.float64))
    tl.store(out + 4, dot.to(tl.float64))
    tl.store(out + 5, rr.to(tl.float64))
    tl.store(out + 6, cc.to(tl.float64))
    tl.store(out + 7, noise.to(tl.float64))
    tl.store(out + 8, w_err.to(tl.float64))
    tl.store(out + 9, col.to(tl.float64))
    tl.store(out + 10, w_ref.to(tl.float64))
    tl.store(out + 11, w_cand.to(tl.float64))


@triton.jit
def _store_cand(out, csum, cabs, n_nan, n_inf):
    """Slots 12-15 of a record: the candidate's own statistics, as float64."""
    tl.store(out + 12, csum.to(tl.float64))
    tl.store(out + 13, cabs.to(tl.float64))
    tl.store(out + 14, n_nan.to(tl.float64))
    tl.store(out + 15, n_inf.to(tl.float64))


@triton.jit
def _row_stats_careful(out, c_row, r_row, tile, D, TILE, atol, rtol, eps,
                       HAS_REF: tl.constexpr, BLOCK: tl.constexpr, LEN_ALIGN: tl.constexpr, STAGES: tl.constexpr):
    """Accumulate columns [tile * TILE, (tile + 1) * TILE) of one row and store its record,
    NaN and Inf accounted for element by element."""
    start = tile * TILE
    stop = tl.multiple_of(tl.minimum(start + TILE, D), LEN_ALIGN)
    lanes = tl.arange(0, BLOCK)
    inf = float("inf")
    csum = tl.zeros([BLOCK], tl.float64)
    cabs = tl.zeros([BLOCK], tl.float32)  # |x| of a float16/bfloat16/float32 value is exact in float32
    n_nan = tl.zeros([BLOCK], tl.int32)
    n_inf = tl.zeros([BLOCK], tl.int32)
    if HAS_REF:
        err_sum = tl.zeros([BLOCK], tl.float64)
        dot = tl.zeros([BLOCK], tl.float64)
        rr = tl.zeros([BLOCK], tl.float64)
        cc = tl.zeros([BLOCK], tl.float64)
        noise = tl.zeros([BLOCK], tl.float64)
        rel_max = tl.zeros([BLOCK], tl.float32)
        best = tl.full([BLOCK], -1.0, tl.float32)
        best_col = tl.zeros([BLOCK], tl.int32)
        n_bad = tl.zeros([BLOCK], tl.int32)
        n_mis = tl.zeros([BLOCK], tl.int32)
    for off in tl.range(start, stop, BLOCK, num_stages=STAGES):
        cols = off + lanes
        m = cols < stop
        c = tl.load(c_row + cols, mask=m, other=0.0).to(tl.float32)
        c_nan = c != c
        c_fin = tl.abs(c) < inf
        csum += c.to(tl.float64)
        cabs = tl.maximum(cabs, tl.where(c_nan, 0.0, tl.abs(c)))
        n_nan += c_nan.to(tl.int32)
        n_inf += (~c_fin & ~c_nan).to(tl.int32)
        if HAS_REF:
            r = tl.load(r_row + cols, mask=m, other=0.0).to(tl.float32)
            r_nan = r != r
            r_fin = tl.abs(r) < inf
            both = r_fin & c_fin
            same_special = ~r_fin & ~c_fin & ((r_nan & c_nan) | (r == c))
            mismatch = ~both & ~same_special
            r0 = tl.where(both, r, 0.0)
            c0 = tl.where(both, c, 0.0)
            d = r0 - c0
            ad = tl.abs(d)
            ar = tl.abs(r0)
            err = tl.where(mismatch, inf, ad)
            err_sum += err.to(tl.float64)
            rel_max = tl.maximum(rel_max, tl.where(mismatch, inf, ad / (ar + eps)))
            n_bad += (ad > atol + rtol * ar).to(tl.int32)
            n_mis += mismatch.to(tl.int32)
            r64 = r0.to(tl.float64)  # products of float32 values are exact in float64
            c64 = c0.to(tl.float64)
            d64 = d.to(tl.float64)
            dot += r64 * c64
            rr += r64 * r64
            cc += c64 * c64
            noise += d64 * d64
            better = m & (err > best)  # strict: a lane keeps its first worst column
            best = tl.where(better, err, best)
            best_col = tl.where(better, cols, best_col)
    if HAS_REF:
        worst, col, w_ref, w_cand = _worst(best, best_col, start, stop, r_row, c_row)
        w_err = tl.where(worst == inf, inf, tl.abs(w_ref - w_cand))  # the float64 value of the worst error
        _store_diff(out, tl.sum(err_sum, axis=0), tl.max(rel_max, axis=0), tl.sum(n_bad, axis=0),
                    tl.sum(n_mis, axis=0), tl.sum(dot, axis=0), tl.sum(rr, axis=0), tl.sum(cc, axis=0),
                    tl.sum(noise, axis=0), w_err, col, w_ref, w_cand)
    else:
        zero = tl.zeros([], tl.float64)
        for k in tl.static_range(12):
            tl.store(out + k, zero)
    _store_cand(out, tl.sum(csum, axis=0), tl.max(cabs, axis=0), tl.sum(n_nan, axis=0), tl.sum(n_inf, axis=0))


@triton.jit
def _finalize_kernel(rec_ptr, desc_ptr, out_ptr, RB: tl.constexpr):
    """Fold one probe's records (desc row: first record, rows, tiles, row length) into
    the 21 slots of parity.compare.diff.S_*."""
    p = tl.program_id(0).to(tl.int64)
    first = tl.load(desc_ptr + p * 4)
    R = tl.load(desc_ptr + p * 4 + 1)
    T = tl.load(desc_ptr + p * 4 + 2)
    D = tl.load(desc_ptr + p * 4 + 3)
    inf = float("inf")
    lanes = tl.arange(0, RB).to(tl.int64)
    err_sum = tl.zeros([], tl.float64)
    n_bad = tl.zeros([], tl.float64)
    n_mis = tl.zeros([], tl.float64)
    dot = tl.zeros([], tl.float64)
    rr = tl.zeros([], tl.float64)
    cc = tl.zeros([], tl.float64)
    noise = tl.zeros([], tl.float64)
    csum = tl.zeros([], tl.float64)
    n_nan = tl.zeros([], tl.float64)
    n_inf = tl.zeros([], tl.float64)
    resid = tl.zeros([], tl.float64)
    tok0 = tl.zeros([], tl.float64)
    rel_max = tl.full([], -inf, tl.float64)
    cabs = tl.full([], -inf, tl.float64)
    later = tl.full([], -inf, tl.float64)
    a_min = tl.full([], inf, tl.float64)
    a_max = tl.full([], -inf, tl.float64)
    best = tl.full([], -inf, tl.float64)
    best_flat = tl.zeros([], tl.int64)
    w_ref = tl.zeros([], tl.float64)
    w_cand = tl.zeros([], tl.float64)
    for r0 in range(0, R, RB):
        rows = r0 + lanes
        m = rows < R
        rc_t = tl.zeros([RB], tl.float64)
        rr_t = tl.zeros([RB], tl.float64)
        cc_t = tl.zeros([RB], tl.float64)
        row_err = tl.full([RB], -inf, tl.float64)
        for t in range(0, T):
            rec = rec_ptr + (first + rows * T + t) * 16
            err_sum += tl.sum(tl.load(rec + 0, mask=m, other=0.0), axis=0)
            rel_max = tl.maximum(rel_max, tl.max(tl.load(rec + 1, mask=m, other=-inf), axis=0))
            n_bad += tl.sum(tl.load(rec + 2, mask=m, other=0.0), axis=0)
            n_mis += tl.sum(tl.load(rec + 3, mask=m, other=0.0), axis=0)
            rc_t += tl.load(rec + 4, mask=m, other=0.0)
            rr_t += tl.load(rec + 5, mask=m, other=0.0)
            cc_t += tl.load(rec + 6, mask=m, other=0.0)
            noise += tl.sum(tl.load(rec + 7, mask=m, other=0.0), axis=0)
            e = tl.load(rec + 8, mask=m, other=-inf)
            row_err = tl.maximum(row_err, e)
            flat = rows * D + tl.load(rec + 9, mask=m, other=0.0).to(tl.int64)
            blk = tl.max(e, axis=0)
            blk_flat = tl.min(tl.where(m & (e == blk), flat, R * D), axis=0)
            pick = m & (flat == blk_flat)
            better = (blk > best) | ((blk == best) & (blk_flat < best_flat))
            best = tl.where(better, blk, best)
            best_flat = tl.where(better, blk_flat, best_flat)
            w_ref = tl.where(better, tl.sum(tl.where(pick, tl.load(rec + 10, mask=m, other=0.0), 0.0), axis=0), w_ref)
            w_cand = tl.where(better, tl.sum(tl.where(pick, tl.load(rec + 11, mask=m, other=0.0), 0.0), axis=0), w_cand)
            csum += tl.sum(tl.load(rec + 12, mask=m, other=0.0), axis=0)
            cabs = tl.maximum(cabs, tl.max(tl.load(rec + 13, mask=m, other=-inf), axis=0))
            n_nan += tl.sum(tl.load(rec + 14, mask=m, other=0.0), axis=0)
            n_inf += tl.sum(tl.load(rec + 15, mask=m, other=0.0), axis=0)
        dot += tl.sum(rc_t, axis=0)
        rr += tl.sum(rr_t, axis=0)
        cc += tl.sum(cc_t, axis=0)
        a = tl.where(rr_t > 0, rc_t / tl.maximum(rr_t, 1e-300), 1.0)
        resid += tl.sum(tl.where(m, tl.maximum(cc_t - 2.0 * a * rc_t + a * a * rr_t, 0.0), 0.0), axis=0)
        a_min = tl.minimum(a_min, tl.min(tl.where(m, a, inf), axis=0))
        a_max = tl.maximum(a_max, tl.max(tl.where(m, a, -inf), axis=0))
        tok0 += tl.sum(tl.where(rows == 0, row_err, 0.0), axis=0)
        later = tl.maximum(later, tl.max(tl.where(m & (rows > 0), row_err, -inf), axis=0))
    out = out_ptr + p * 21
    tl.store(out + 0, err_sum)
    tl.store(out + 1, rel_max)
    tl.store(out + 2, n_bad)
    tl.store(out + 3, n_mis)
    tl.store(out + 4, dot)
    tl.store(out + 5, rr)
    tl.store(out + 6, cc)
    tl.store(out + 7, noise)
    tl.store(out + 8, best)
    tl.store(out + 9, best_flat.to(tl.float64))
    tl.store(out + 10, w_ref)
    tl.store(out + 11, w_cand)
    tl.store(out + 12, csum)
    tl.store(out + 13, cabs)
    tl.store(out + 14, n_nan)
    tl.store(out + 15, n_inf)
    tl.store(out + 16, tok0)
    tl.store(out + 17, later)
    tl.store(out + 18, resid)
    tl.store(out + 19, a_min)
    tl.store(out + 20, a_max)
