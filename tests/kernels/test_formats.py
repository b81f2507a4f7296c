"""Encoders: round trip, the byte-level layout of docs/formats.md, and bad input.

Masks are built here with the structure of each pattern (random, odd shapes, empty and
full), independently of the pruner, so the encoders are tested on every legal input and
not only on what one pruning heuristic happens to produce.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import (
    ENCODINGS,
    LEGAL_NIBBLES,
    BsrWeight,
    CsrWeight,
    DenseWeight,
    KernelConfig,
    TileWeight,
    VwWeight,
    compress_2to4,
    encode,
    expand_2to4,
    metadata_from_lanes,
    metadata_to_lanes,
)

from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES as PATTERNS
from tvwsim.pattern_spec import TILED_PATTERNS, pattern_spec

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- mask builders (shared with test_reference.py) -------------------------------------
@dataclass(frozen=True)
class Layout:
    """Stand-in for tvwsim.kernels.patterns.TileLayout (same attributes)."""

    tile_width: int
    rows: np.ndarray
    kept_k: tuple


def config_for(pattern: str, bm: int = 32, bk: int | None = None) -> KernelConfig:
    if pattern_spec(pattern).sparse_mma:
        return KernelConfig(bm=bm, bk=bk or 64, mma="sparse")
    return KernelConfig(bm=bm, bk=bk or 16)


def random_mask(
    rng: np.random.Generator,
    pattern: str,
    n: int,
    k: int,
    density: float,
    *,
    g: int = 32,
    block: int = 16,
    thin: bool = False,
) -> tuple[np.ndarray, Layout | None]:
    """A random mask with `pattern`'s structure (and the tile layout for tw/tvw).

    `density` steers how much is kept (0 keeps nothing, 1 keeps everything the pattern
    allows). `thin` drops a random part of a tw/tvw mask inside its layout, so the mask
    is a strict subset of what the layout allows (the encoder must accept that).
    """
    if pattern in ("dense", "ew"):
        return rng.random((n, k)) < density, None
    if pattern == "bw":
        nb, kb = -(-n // block), -(-k // block)
        keep = rng.random((nb, kb)) < density
        return np.kron(keep, np.ones((block, block), dtype=bool))[:n, :k].astype(bool), None
    if pattern == "vw":
        return _random_2to4(rng, n, k, density), None
    row_density = 0.0 if density == 0 else max(density, 0.3)
    rows = np.flatnonzero(rng.random(n) < row_density).astype(np.int32)
    kept_k, mask = [], np.zeros((n, k), dtype=bool)
    for start in range(0, rows.size, g):
        tile_rows = rows[start : start + g]
        cols = np.flatnonzero(rng.random(k) < density).astype(np.int32)
        kept_k.append(cols)
        if pattern == "tw":
            sub = np.ones((tile_rows.size, cols.size), dtype=bool)
        else:
            sub = _random_2to4(rng, tile_rows.size, cols.size, 1.0)
        if thin:
            sub &= rng.random(sub.shape) < 0.5
        mask[np.ix_(tile_rows, cols)] = sub
    return mask, Layout(g, rows, tuple(kept_k))


def _random_2to4(rng: np.random.Generator, n: int, k: int, density: float) -> np.ndarray:
    """Each aligned group of 4 keeps 0, 1 or 2 random positions (more with density)."""
    groups = -(-k // 4)
    counts = rng.binomial(2, density, size=(n, groups))
    order = rng.random((n, groups, 4)).argsort(axis=2)
    mask = (order < counts[:, :, None]).reshape(n, groups * 4)
    return mask[:, :k]


def fp16_masked(weight: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, weight.astype(np.float16), np.float16(0))


shapes = st.tuples(st.integers(1, 70), st.integers(1, 150))
densities = st.sampled_from([0.0, 0.15, 0.5, 0.85, 1.0])
seeds = st.integers(0, 2**32 - 1)


# -- round trip -----------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
@SETTINGS
@given(shape=shapes, density=densities, seed=seeds, bm=st.sampled_from([16, 32]))
def test_round_trip_decode_equals_fp16_masked_weight(pattern, shape, density, seed, bm):
    rng = np.random.default_rng(seed)
    n, k = shape
    mask, _ = random_mask(rng, pattern, n, k, density, g=bm, block=16)
    weight = rng.standard_normal((n, k)) * 10
    enc = encode(weight, mask, pattern, config_for(pattern, bm=bm), block=16)
    assert isinstance(enc, ENCODINGS[pattern])
    assert (enc.pattern, enc.n, enc.k) == (pattern, n, k)
    decoded = enc.decode()
    assert decoded.dtype == np.float16 and decoded.shape == (n, k)
    np.testing.assert_array_equal(decoded, fp16_masked(weight, mask))


@pytest.mark.parametrize("pattern", TILED_PATTERNS)
@SETTINGS
@given(shape=shapes, density=densities, seed=seeds, thin=st.booleans())
def test_round_trip_with_layout_keeps_the_layout_exactly(pattern, shape, density, seed, thin):
    rng = np.random.default_rng(seed)
    n, k = shape
    mask, layout = random_mask(rng, pattern, n, k, density, g=16, thin=thin)
    weight = rng.standard_normal((n, k)).astype(np.float32)
    enc = encode(weight, mask, pattern, config_for(pattern, bm=16), layout=layout)
    np.testing.assert_array_equal(enc.decode(), fp16_masked(weight, mask))
    assert enc.n_row_tiles == len(layout.kept_k)
    np.testing.assert_array_equal(enc.row_map[enc.row_map >= 0], layout.rows)
    for t, cols in enumerate(layout.kept_k):
        listed = enc.tile_k_index(t)
        np.testing.assert_array_equal(listed[: cols.size], cols)
        assert (listed[cols.size :] == -1).all()
        assert enc.tile_kept_k[t] == cols.size


def test_all_kept_and_all_dropped_corner_cases():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((19, 45))
    full, empty = np.ones((19, 45), bool), np.zeros((19, 45), bool)
    for pattern in ("dense", "ew", "bw", "tw", "tvw"):
        cfg = config_for(pattern)
        for mask in (full, empty):
            enc = encode(weight, mask, pattern, cfg, block=16)
            np.testing.assert_array_equal(enc.decode(), fp16_masked(weight, mask))
    # tvw from an all-kept mask: every 2:4 group closes after two columns.
    enc = encode(weight, full, "tvw", config_for("tvw"))
    k_index = enc.tile_k_index(0)
    assert list(k_index[:8]) == [0, 1, -1, -1, 2, 3, -1, -1]
    assert enc.tile_kept_k[0] == 4 * 22 + 1  # 22 groups of [2c, 2c+1, -1, -1], then 44
    # Nothing kept: no tile at all, so no CTA and no bytes of values.
    enc = encode(weight, empty, "tw", config_for("tw"))
    assert enc.n_row_tiles == 0 and enc.values.size == 0 and list(enc.k_ptr) == [0]
    assert enc.tile_k_lengths().shape == (0,)


def test_kept_zero_weight_is_stored_not_dropped():
    weight = np.zeros((3, 8))
    mask = np.zeros((3, 8), bool)
    mask[1, [2, 5]] = True
    enc = encode(weight, mask, "ew")
    assert enc.nnz == 2 and list(enc.col_idx) == [2, 5] and list(enc.row_ptr) == [0, 0, 2, 2]
    tw = encode(weight, mask, "tw", KernelConfig(bm=16, bk=16))
    assert list(tw.tile_k_index(0)[:2]) == [2, 5] and tw.tile_kept_k[0] == 2


def test_values_round_to_nearest_fp16():
    weight = np.array([[1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, -(2.0**-24)]])
    enc = encode(weight, None, "dense")
    np.testing.assert_array_equal(enc.values[0, :4], weight[0].astype(np.float16))
    # Ties go to even: 1 + 2^-11 -> 1, 1 + 3 * 2^-11 -> 1 + 2^-9.
    assert enc.values[0, 0] == 1.0 and enc.values[0, 1] == 1.0 + 2**-9


# -- layouts per docs/formats.md ----------------------------------------------------------
def _expected_index_bytes(enc) -> int:
    return sum(a.nbytes for a in enc.buffers().values() if a.dtype == np.int32)


@pytest.mark.parametrize("pattern", PATTERNS)
@SETTINGS
@given(shape=shapes, density=densities, seed=seeds)
def test_buffers_dtypes_and_byte_counts(pattern, shape, density, seed):
    rng = np.random.default_rng(seed)
    n, k = shape
    mask, _ = random_mask(rng, pattern, n, k, density, g=32, block=16)
    cfg = config_for(pattern)
    enc = encode(rng.standard_normal((n, k)), mask, pattern, cfg, block=16)
    counts = enc.byte_counts()
    buffers = enc.buffers()
    assert counts.total_bytes == sum(a.nbytes for a in buffers.values())
    assert counts.values_bytes == 2 * buffers["values"].size
    assert buffers["values"].dtype == np.float16
    assert counts.indices_bytes == _expected_index_bytes(enc)
    for name, array in buffers.items():
        assert not array.flags.writeable, name
        if name not in ("values", "metadata"):
            assert array.dtype == np.int32, name
    if pattern_spec(pattern).sparse_mma:
        assert buffers["metadata"].dtype == np.uint32
        assert counts.metadata_bytes == buffers["metadata"].nbytes
    else:
        assert counts.metadata_bytes == 0
    tiles = enc.tile_k_lengths()
    assert tiles.dtype == np.int32 and tiles.shape == (enc.n_row_tiles,)
    assert (tiles >= 0).all()


@SETTINGS
@given(shape=shapes, seed=seeds, bk=st.sampled_from([16, 32]))
def test_dense_layout(shape, seed, bk):
    n, k = shape
    rng = np.random.default_rng(seed)
    cfg = KernelConfig(bm=16, bk=bk)
    enc = encode(rng.standard_normal((n, k)), None, "dense", cfg)
    k_pad = -(-k // bk) * bk
    assert isinstance(enc, DenseWeight) and enc.values.shape == (n, k_pad)
    assert (enc.values[:, k:] == 0).all()
    assert list(enc.tile_k_lengths()) == [k_pad] * (-(-n // 16))


@SETTINGS
@given(shape=shapes, density=densities, seed=seeds)
def test_csr_layout(shape, density, seed):
    n, k = shape
    rng = np.random.default_rng(seed)
    mask = rng.random((n, k)) < density
    enc = encode(rng.standard_normal((n, k)), mask, "ew", KernelConfig(bm=16, bk=16))
    assert isinstance(enc, CsrWeight)
    assert enc.row_ptr.shape == (n + 1,) and enc.row_ptr[0] == 0
    assert enc.row_ptr[-1] == enc.nnz == mask.sum()
    for r in range(n):
        cols = enc.col_idx[enc.row_ptr[r] : enc.row_ptr[r + 1]]
        np.testing.assert_array_equal(cols, np.flatnonzero(mask[r]))
    # ew has no tensor-core kernel: a tile's "length" is its nonzero count.
    per_tile = [mask[t : t + 16].sum() for t in range(0, n, 16)]
    assert list(enc.tile_k_lengths()) == per_tile


@SETTINGS
@given(shape=shapes, density=densities, seed=seeds, block=st.sampled_from([16, 32]))
def test_bsr_layout(shape, density, seed, block):
    n, k = shape
    rng = np.random.default_rng(seed)
    mask, _ = random_mask(rng, "bw", n, k, density, block=block)
    weight = rng.standard_normal((n, k))
    cfg = KernelConfig(bm=64, bk=16)
    enc = encode(weight, mask, "bw", cfg, block=block)
    assert isinstance(enc, BsrWeight)
    nbr, nbc = -(-n // block), -(-k // block)
    padded = np.zeros((nbr * block, nbc * block), dtype=np.float16)
    padded[:n, :k] = fp16_masked(weight, mask)
    assert enc.block_row_ptr.shape == (nbr + 1,)
    assert enc.values.shape == (enc.nnzb, block, block)
    for br in range(nbr):
        lo, hi = enc.block_row_ptr[br], enc.block_row_ptr[br + 1]
        cols = enc.block_col[lo:hi]
        assert (np.diff(cols) > 0).all()
        for i, bc in zip(range(lo, hi), cols, strict=True):
            want = padded[br * block : (br + 1) * block, bc * block : (bc + 1) * block]
            np.testing.assert_array_equal(enc.values[i], want)
    # Kernel view: a tile's union columns and, per block row, the block or -1.
    per_tile = 64 // block
    assert enc.n_row_tiles == -(-nbr // per_tile)
    assert enc.tile_block.shape == (enc.tile_col.size, per_tile)
    present = np.zeros(enc.n_row_tiles, dtype=int)
    for t in range(enc.n_row_tiles):
        cols = enc.tile_col[enc.tile_col_ptr[t] : enc.tile_col_ptr[t + 1]]
        assert (np.diff(cols) > 0).all()
        blocks = enc.tile_block[enc.tile_col_ptr[t] : enc.tile_col_ptr[t + 1]]
        for u, bc in enumerate(cols):
            assert (blocks[u] >= 0).any()  # a union column has at least one block
            for r, idx in enumerate(blocks[u]):
                br = t * per_tile + r
                if idx >= 0:
                    assert enc.block_col[idx] == bc
                    assert enc.block_row_ptr[br] <= idx < enc.block_row_ptr[br + 1]
                    present[t] += 1
                elif br < nbr:
                    lo, hi = enc.block_row_ptr[br], enc.block_row_ptr[br + 1]
                    assert bc not in enc.block_col[lo:hi]
    np.testing.assert_array_equal(enc.tile_present_blocks(), present)
    assert enc.tile_present_blocks().sum() == enc.nnzb
    np.testing.assert_array_equal(enc.tile_k_lengths(), np.diff(enc.tile_col_ptr) * block)


@SETTINGS
@given(shape=shapes, density=densities, seed=seeds)
def test_vw_layout_and_metadata_nibbles(shape, density, seed):
    n, k = shape
    rng = np.random.default_rng(seed)
    mask, _ = random_mask(rng, "vw", n, k, density)
    weight = rng.standard_normal((n, k))
    enc = encode(weight, mask, "vw", config_for("vw"))
    assert isinstance(enc, VwWeight)
    n_pad, k_pad = -(-n // 16) * 16, -(-k // 64) * 64
    assert enc.values.shape == (n_pad, k_pad // 2)
    assert enc.metadata.shape == (n_pad // 16, k_pad // 64, 32)
    _assert_legal_nibbles(enc.metadata)
    # Stored pairs are the group's kept values in ascending K (zeros fill the rest).
    logical = np.zeros((n_pad, k_pad), dtype=np.float16)
    logical[:n, :k] = fp16_masked(weight, mask)
    meta16 = metadata_from_lanes(enc.metadata)
    for r in range(n_pad):
        for grp in range(k_pad // 4):
            nibble = int(meta16[r, grp // 4]) >> (4 * (grp % 4)) & 0xF
            first, second = nibble & 3, nibble >> 2
            kept = [p for p in range(4) if r < n and 4 * grp + p < k and mask[r, 4 * grp + p]]
            assert set(kept) <= {first, second}
            assert enc.values[r, 2 * grp] == logical[r, 4 * grp + first]
            assert enc.values[r, 2 * grp + 1] == logical[r, 4 * grp + second]


def _assert_legal_nibbles(words: np.ndarray) -> None:
    words = words.astype(np.uint64).ravel()
    nibbles = (words[:, None] >> (4 * np.arange(8, dtype=np.uint64))) & 0xF
    assert np.isin(nibbles, LEGAL_NIBBLES).all()


@pytest.mark.parametrize("pattern", TILED_PATTERNS)
@SETTINGS
@given(shape=shapes, density=densities, seed=seeds, with_layout=st.booleans())
def test_tile_layout(pattern, shape, density, seed, with_layout):
    n, k = shape
    rng = np.random.default_rng(seed)
    g = 16
    mask, layout = random_mask(rng, pattern, n, k, density, g=g, thin=True)
    weight = rng.standard_normal((n, k))
    sparse = pattern_spec(pattern).sparse_mma
    cfg = config_for(pattern, bm=g, bk=64 if sparse else 16)
    enc = encode(weight, mask, pattern, cfg, layout=layout if with_layout else None)
    assert isinstance(enc, TileWeight) and enc.sparse == sparse
    tiles = enc.n_row_tiles
    assert enc.row_map.shape == (tiles * g,) and enc.tile_kept_k.shape == (tiles,)
    surviving = enc.row_map[enc.row_map >= 0]
    assert (np.diff(surviving) > 0).all()
    assert (enc.row_map[surviving.size :] == -1).all()  # -1 only after the last row
    if not with_layout:
        np.testing.assert_array_equal(surviving, np.flatnonzero(mask.any(axis=1)))
    lengths = np.diff(enc.k_ptr)
    np.testing.assert_array_equal(lengths, -(-enc.tile_kept_k // cfg.bk) * cfg.bk)
    np.testing.assert_array_equal(enc.tile_k_lengths(), lengths)
    assert enc.k_index.shape == (enc.k_ptr[-1],)
    divisor = 2 if enc.sparse else 1
    assert enc.values.shape == (g * enc.k_ptr[-1] // divisor,)
    if enc.sparse:
        assert enc.metadata.shape == (g * enc.k_ptr[-1] // 32,)
        _assert_legal_nibbles(enc.metadata)
    decoded = fp16_masked(weight, mask)
    for t in range(tiles):
        k_index, rows = enc.tile_k_index(t), enc.tile_rows(t)
        real = k_index >= 0
        assert (k_index[enc.tile_kept_k[t] :] == -1).all()  # tail padding
        assert (np.diff(k_index[real]) > 0).all()  # kept K ascending
        if enc.sparse:  # tile block starts where the contract says
            start = int(enc.k_ptr[t])
            np.testing.assert_array_equal(
                enc.tile_values(t).ravel(),
                enc.values[g * start // 2 : g * start // 2 + g * lengths[t] // 2],
            )
            block = expand_2to4(enc.tile_values(t), metadata_from_lanes(enc.tile_metadata(t)))
            # 2:4 along the compacted kept-K: at most 2 nonzero per aligned group of 4.
            groups = (block != 0).reshape(g, -1, 4).sum(axis=2)
            assert (groups <= 2).all()
        else:
            block = enc.tile_values(t)
        assert (block[:, ~real] == 0).all()  # padding entries carry zero weight
        assert (block[rows < 0] == 0).all()  # padding rows too
        ok = rows >= 0
        np.testing.assert_array_equal(
            block[np.ix_(ok, real)], decoded[np.ix_(rows[ok], k_index[real])]
        )


# -- the 2:4 metadata layout ----------------------------------------------------------
@SETTINGS
@given(row_blocks=st.integers(1, 3), chunks=st.integers(1, 3), seed=seeds)
def test_metadata_lane_order_matches_the_contract_formula(row_blocks, chunks, seed):
    rng = np.random.default_rng(seed)
    meta16 = rng.integers(0, 2**16, size=(16 * row_blocks, 4 * chunks), dtype=np.uint16)
    words = metadata_to_lanes(meta16)
    assert words.shape == (row_blocks, chunks, 32) and words.dtype == np.uint32
    for rb in range(row_blocks):
        for kc in range(chunks):
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                want = (int(meta16[rb * 16 + g + 8, 4 * kc + t]) << 16) | int(
                    meta16[rb * 16 + g, 4 * kc + t]
                )
                assert int(words[rb, kc, lane]) == want
    np.testing.assert_array_equal(metadata_from_lanes(words), meta16)


@SETTINGS
@given(rows=st.integers(1, 40), groups16=st.integers(1, 6), seed=seeds)
def test_compress_2to4_positions_are_ascending_and_cover_the_kept(rows, groups16, seed):
    rng = np.random.default_rng(seed)
    length = 16 * groups16
    mask = _random_2to4(rng, rows, length, rng.random())
    weight = np.where(mask, rng.standard_normal((rows, length)), 0).astype(np.float16)
    values, meta16 = compress_2to4(weight, mask)
    assert values.shape == (rows, length // 2) and meta16.shape == (rows, length // 16)
    nibbles = (meta16[:, :, None] >> (4 * np.arange(4, dtype=np.uint16))) & 0xF
    assert np.isin(nibbles, LEGAL_NIBBLES).all()
    # Padding choice: empty -> (0, 1); one kept at p -> (p, p+1) or (2, 3).
    nib = nibbles.reshape(rows, -1)
    bits = mask.reshape(rows, -1, 4)
    empty = ~bits.any(axis=2)
    assert (nib[empty] == 0x4).all()
    np.testing.assert_array_equal(expand_2to4(values, meta16), weight)


def test_every_one_kept_position_pads_to_a_neighbour():
    for p, want in ((0, 0x4), (1, 0x9), (2, 0xE), (3, 0xE)):
        mask = np.zeros((1, 16), bool)
        mask[0, p] = True
        _, meta16 = compress_2to4(np.where(mask, 1.0, 0.0).astype(np.float16), mask)
        assert int(meta16[0, 0]) & 0xF == want, p


# -- bad input -----------------------------------------------------------------------
def _bad(argument, *args, **kwargs):
    with pytest.raises(InputError) as err:
        encode(*args, **kwargs)
    assert err.value.argument == argument, str(err.value)
    return err.value


def test_bad_input_names_the_argument():
    w = np.ones((8, 16))
    ok = np.ones((8, 16), bool)
    _bad("pattern", w, ok, "nm")
    _bad("mask", w, np.ones((8, 15), bool), "dense")
    _bad("mask", w, np.ones((8, 16), np.int8), "ew")
    _bad("weight", np.ones(16), None, "dense")
    _bad("weight", np.ones((0, 4)), None, "dense")
    _bad("weight", np.array([["a"]]), None, "dense")
    _bad("config", w, ok, "vw", KernelConfig())  # vw needs a sparse-mma config
    _bad("config", w, ok, "tw", KernelConfig(bk=64, mma="sparse"))
    _bad("config", w, ok, "dense", "128x128x32")
    _bad("layout", w, ok, "vw", config_for("vw"), layout=Layout(128, np.arange(8), ()))


def test_mask_inconsistent_with_pattern_is_rejected_never_dropped():
    w = np.ones((16, 64))
    three = np.zeros((16, 64), bool)
    three[5, 8:11] = True
    err = _bad("mask", w, three, "vw")
    assert "row 5" in err.problem and "K 8..11" in err.problem
    partial = np.zeros((16, 64), bool)
    partial[0:16, 0:15] = True
    _bad("mask", w, partial, "bw", KernelConfig(bm=32, bk=16), block=16)


def test_tile_layout_mismatches():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 70))
    mask, layout = random_mask(rng, "tvw", 40, 70, 0.7, g=16)
    _bad("config", w, mask, "tvw", config_for("tvw", bm=32), layout=layout)
    # A kept weight outside the layout (a K the tile does not list) is an error.
    outside = mask.copy()
    row, tile_cols = layout.rows[0], layout.kept_k[0]
    missing = np.setdiff1d(np.arange(70), tile_cols)
    outside[row, missing[0]] = True
    _bad("mask", w, outside, "tw", config_for("tw", bm=16), layout=layout)
    # A kept weight in a row the layout dropped, too.
    dropped = np.setdiff1d(np.arange(40), layout.rows)
    if dropped.size:
        extra = mask.copy()
        extra[dropped[0], 0] = True
        _bad("mask", w, extra, "tw", config_for("tw", bm=16), layout=layout)
    # tvw with a layout: three kept of one row in a compacted group of 4.
    crowded = np.zeros_like(mask)
    crowded[row, tile_cols[:3]] = True
    _bad("mask", w, crowded, "tvw", config_for("tvw", bm=16), layout=layout)
    # Malformed layouts.
    bad_rows = dataclasses.replace(layout, rows=layout.rows[::-1].copy())
    _bad("layout", w, mask, "tw", config_for("tw", bm=16), layout=bad_rows)
    short = dataclasses.replace(layout, kept_k=layout.kept_k[:-1])
    _bad("layout", w, mask, "tw", config_for("tw", bm=16), layout=short)
    unsorted = dataclasses.replace(layout, kept_k=(layout.kept_k[0][::-1],) + layout.kept_k[1:])
    _bad("layout", w, mask, "tw", config_for("tw", bm=16), layout=unsorted)


def test_block_and_fp16_range_errors():
    w = np.ones((32, 32))
    _bad("block", w, None, "bw", KernelConfig(bm=32, bk=32), block=16)  # bk > block
    _bad("block", w, None, "bw", KernelConfig(bm=48, bk=16), block=32)  # bm % block
    _bad("block", w, None, "bw", block=20)
    big = w.copy()
    big[3, 4] = 1e6
    err = _bad("weight", big, None, "dense")
    assert "(3, 4)" in err.problem
    mask = np.ones((32, 32), bool)
    mask[3, 4] = False  # a dropped out-of-range weight does not matter
    assert encode(big, mask, "ew").nnz == 32 * 32 - 1
    nan = w.copy()
    nan[0, 0] = np.nan
    _bad("weight", nan, None, "tw")


# -- with the real pruner ---------------------------------------------------------------
@pytest.mark.parametrize(
    "pattern, sparsity",
    [("dense", 0.0), ("ew", 0.7), ("bw", 0.6), ("vw", 0.5), ("tw", 0.7), ("tvw", 0.8)],
)
def test_encode_accepts_what_the_pruner_produces(pattern, sparsity):
    from tvwsim.kernels.patterns import prune_with_layout

    rng = np.random.default_rng(12)
    weight = rng.standard_normal((150, 333)).astype(np.float32)
    pruned = prune_with_layout(weight, pattern, sparsity, tile=32, block=32)
    cfg = config_for(pattern, bm=32, bk=32 if pattern == "bw" else None)
    enc = encode(weight, pruned.mask, pattern, cfg, layout=pruned.layout)
    np.testing.assert_array_equal(enc.decode(), fp16_masked(weight, pruned.mask))
    if pruned.layout is not None:
        assert enc.n_row_tiles == pruned.layout.n_tiles
        np.testing.assert_array_equal(enc.tile_kept_k, pruned.layout.kept_k_counts())
