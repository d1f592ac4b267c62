"""3x3 convolution by Winograd's minimal filtering F(2x2, 3x3): the engine's fast CPU convolution.

This module works on raw NumPy arrays (no autograd). It computes exactly what
:func:`miniran.functional.conv2d` computes for a 3x3 kernel with stride 1 and any
zero padding, and its backward pass, with fewer multiplications and far less
memory traffic than im2col. The readable im2col code stays the reference it is
tested against (``tests/test_winograd.py``).

Notation: N batch, C input and O output channels, H x W input, (PH, PW) zero
padding on each side, OH = H + 2*PH - 2 and OW = W + 2*PW - 2 the output size.

**The idea (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016).** Cut the output into 2x2 tiles, TH = ceil(OH/2) rows and
TW = ceil(OW/2) columns of them; tile (t, u) reads the 4x4 patch ``d`` of the
padded input whose corner is at row 2t, column 2u (neighbouring patches
overlap by 2). For one channel pair, its 2x2 output is::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* : elementwise, on 4x4)

with the 3x3 kernel ``g`` and the matrices::

          [1  0 -1  0]         [ 1    0    0 ]
    B^T = [0  1  1  0]    G =  [1/2  1/2  1/2]    A^T = [1  1  1  0]
          [0 -1  1  0]         [1/2 -1/2  1/2]          [0  1 -1 -1]
          [0  1  0 -1]         [ 0    0    1 ]

Summing over the C input channels happens between the transforms, so the
whole convolution is three stages:

1. input transform ``V = B^T d B`` of every patch: V has shape (16, C, P),
   P the number of tiles, the 16 being the 4x4 positions ``(i, j)`` ->
   ``4*i + j``;
2. kernel transform ``U = G g G^T``: shape (16, O, C), tiny;
3. 16 matrix products ``M[k] = U[k] @ V[k]`` (O, P), done as ONE batched
   ``np.matmul``, then the output transform ``Y = A^T m A`` of every tile.

B^T and A^T hold only 0 and +-1, so stages 1 and 3 are additions and
subtractions of strided slices; this code writes them out as such (one call
over the whole batch per slice) instead of multiplying by the matrices.

**Why it is faster.** A 2x2 output tile costs 16 multiplies per channel pair
instead of 4*9 = 36: 2.25x fewer. More important on a CPU, where these small
convolutions are limited by memory traffic: im2col copies the input 9 times
(``col`` is C*9 x N*OH*OW), while V is only 16/4 = 4 times the input, and each
of the 16 products reads a (C, P) block once. The backward pass has the same
structure (below), so forward and backward both move about half the bytes.

**Accuracy.** The transforms multiply only by 0, +-1 and +-1/2 (exact in
binary floating point); the rounding comes from the few additions in them,
so float32 results are as close to the exact ones as those of the float32
im2col path (``docs/performance.md`` gives the figures;
``tests/test_winograd.py`` checks 1e-5 of the largest value in float32 and
1e-12 in float64).

**The backward pass** is the adjoint (transpose) of each forward stage, in
reverse order. With ``gY`` the gradient of the output:

1. ``gM = A gY A^T`` for every tile (adjoint of the output transform);
2. ``gU[k] = gM[k] @ V[k]^T`` summed over the tiles P (one batched product),
   then ``gw = G^T gU G``; and ``gV[k] = U[k]^T @ gM[k]``;
3. ``gd = B gV B^T`` for every patch, and the overlapping patches *add up*
   onto the padded input; the padding is dropped (adjoint of the input
   transform).

**Memory layout.** V, M and their gradients are (16, C or O, N, TH, TW+1)
arrays, i.e. (16, C or O, P) with P = N*TH*(TW+1): every product is a BLAS
call on contiguous rows. The spare tile column u = TW makes every pass of
the transforms an operation on long contiguous runs (see "The tile layout"
below); it costs 1/TW more work in the products. Only two passes are
strided: reading the input into its even/odd rows and columns (the padding
is handled there by index ranges, never by a padded copy), and writing the
(N, O, OH, OW) output through a strided view (and the same two, mirrored,
in the backward pass).

**Chunks and scratch.** The batch goes through all stages a few images at
a time (about 2 MB of V each), so that the intermediate arrays stay in the
CPU caches between passes; they live in scratch buffers reused from call to
call (:func:`release_workspace` frees them). Only V (kept for the backward
pass), y and the gradients are new arrays.

Where it pays: forward plus backward beats im2col at every shape of
Attention-56; the forward pass alone only on the larger maps (on 8x8 and 4x4
maps its strided passes run over rows of 4 or 2 tiles), so
:class:`~miniran.functional.conv.Conv2dFunction` uses im2col for a
forward-only pass on maps under 16x16. ``docs/performance.md`` has the times.
"""

from __future__ import annotations

import threading

import numpy as np

from miniran.functional._args import _pair

# The matrices of F(2x2, 3x3), for reference and the tests: the code below
# writes their products out as additions and subtractions.
B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1.0, 0.0, 0.0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0.0, 0.0, 1.0]])
A_T = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=np.float64)

# The 1-D input transform as pairs of window positions: row j of B^T is
# (+-1 at position la) and (+-1 at position lb), la < lb.
#   v0 = d0 - d2    v1 = d1 + d2    v2 = d2 - d1    v3 = d1 - d3
_INPUT_PAIRS = (((0, +1), (2, -1)),
                ((1, +1), (2, +1)),
                ((1, -1), (2, +1)),
                ((1, +1), (3, -1)))

# Sign of the 4x4 position (i, j) in the backward pass: s_i * s_j with
# s = (1, 1, 1, -1). Using A' = diag(s) A instead of A turns the negations of
# the output-gradient transform into plain copies; the signs go into U and gU,
# which are tiny (see conv3x3_winograd_backward).
_S = np.array([1.0, 1.0, 1.0, -1.0])
_SIGN16 = np.outer(_S, _S).reshape(16)


class WinogradSaved:
    """What the backward pass needs from the forward pass (see :func:`conv3x3_winograd_forward`).

    Attributes:
        x_shape: (N, C, H, W) of the input.
        padding: (PH, PW).
        U: the transformed kernels, (16, O, C): small.
        V: the transformed input, (16, C, N*TH*(TW+1)), about 4x the input's
            memory; None when the forward pass was told not to keep it
            (then no weight gradient can be computed).
        tiles: (TH, TW).
        w_dtype: dtype of the weight as given (the gradient is returned in it).
    """

    __slots__ = ("x_shape", "padding", "U", "V", "tiles", "x_dtype", "w_dtype")

    def __init__(self, x_shape, padding, U, V, tiles, x_dtype, w_dtype):
        self.x_shape, self.padding, self.U, self.V = x_shape, padding, U, V
        self.tiles, self.x_dtype, self.w_dtype = tiles, x_dtype, w_dtype


# --------------------------------------------------------------------------- scratch buffers
#
# The intermediate arrays (the phases, the row pass, M and the gradients of M
# and V) are reused from call to call: a freshly allocated large array costs a
# page fault per page on first touch (the OS zeroes each new page), which for
# these memory-bound passes took longer than the arithmetic itself. One
# buffer per role and thread, grown to the largest size asked for.

_workspace = threading.local()


def _scratch(role, shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` in the reusable buffer named ``role``."""
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        buffers = _workspace.buffers = {}
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = buffers.get(role)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[role] = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def release_workspace() -> None:
    """Free the scratch buffers of the calling thread (they are made again when next needed)."""
    _workspace.buffers = {}


# The batch is processed a few images at a time, so that the intermediate
# arrays of one chunk (phases, rows, M, ...) stay in the CPU caches between
# the passes that write and read them, instead of going out to main memory.
_CHUNK_BYTES = 1 << 21


def _image_chunks(n, bytes_per_image):
    """Split range(n) into (start, stop) pieces of about _CHUNK_BYTES each (at least one image)."""
    per_chunk = max(1, _CHUNK_BYTES // max(1, bytes_per_image))
    count = -(-n // per_chunk)
    bounds = [n * k // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


# --------------------------------------------------------------------------- public functions


def winograd_supported(x_shape, w_shape, stride, padding) -> bool:
    """Whether :func:`conv3x3_winograd_forward` computes this convolution.

    True for a 4-D input and a 3x3 kernel with matching channels, stride 1 (both
    axes), any padding >= 0 (an int or a pair) and an output of at least 1x1.
    """
    try:
        (sy, sx), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    except (TypeError, ValueError):
        return False
    if len(x_shape) != 4 or len(w_shape) != 4 or x_shape[1] != w_shape[1]:
        return False
    if tuple(w_shape[2:]) != (3, 3) or (sy, sx) != (1, 1) or min(ph, pw) < 0:
        return False
    return x_shape[2] + 2 * ph >= 3 and x_shape[3] + 2 * pw >= 3


def conv3x3_winograd_forward(x, w, padding, keep=True, out=None):
    """y = conv2d(x, w, stride=1, padding=padding) for a 3x3 kernel, by Winograd F(2x2, 3x3).

    Args:
        x: input (N, C, H, W), a NumPy array.
        w: kernels (O, C, 3, 3).
        padding: PH (= PW) or the pair (PH, PW), each >= 0.
        keep: keep the transformed input V in ``saved``. V is needed for the
            weight gradient and costs about 4x the input's memory; without
            it only the input gradient can be computed.
        out: optional (N, O, OH, OW) array of the result's dtype to write y
            into (e.g. a slice of a bigger batch's output).

    Returns:
        ``(y, saved)``: y of shape (N, O, OH, OW), contiguous, in the common
        dtype of x and w (float32 stays float32); ``saved`` a
        :class:`WinogradSaved` holding U (16, O, C) and, with ``keep``, V
        (16, C, N*TH*(TW+1)). Nothing else (not x, not y) is kept alive.

    Raises:
        ValueError: if :func:`winograd_supported` says no.
    """
    ph, pw = _pair(padding, "padding")
    if not winograd_supported(x.shape, w.shape, 1, (ph, pw)):
        raise ValueError(
            f"conv3x3_winograd_forward: not a 3x3, stride-1 convolution with padding >= 0 "
            f"(x {x.shape}, w {w.shape}, padding {padding})"
        )
    x_dtype, w_dtype = x.dtype, w.dtype
    dtype = np.result_type(x_dtype, w_dtype)
    x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
    n, c, h, wd = x.shape  # wd: the width (w is the weight)
    o = w.shape[0]
    oh, ow = h + 2 * ph - 2, wd + 2 * pw - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2

    tiles = th * (tw + 1)                          # tiles per image, with the spare column
    U = _kernel_transform(w)                       # (16, O, C)
    # (16, C, P), P = N*TH*(TW+1); without keep, only a chunk at a time in scratch
    V = np.empty((16, c, n * tiles), dtype=dtype) if keep else None
    if out is not None and (tuple(out.shape) != (n, o, oh, ow) or out.dtype != dtype):
        raise ValueError(f"conv3x3_winograd_forward: out must be a {dtype} array of shape "
                         f"{(n, o, oh, ow)}, got {out.dtype} {tuple(out.shape)}")
    y = np.empty((n, o, oh, ow), dtype=dtype) if out is None else out
    for n0, n1 in _image_chunks(n, 16 * max(c, o) * tiles * y.itemsize):
        if keep:
            V_part = V[:, :, n0 * tiles:n1 * tiles]
        else:
            V_part = _scratch("V", (16, c, (n1 - n0) * tiles), dtype)
        _input_transform(x[n0:n1], ph, pw, th, tw, V_part)
        M = np.matmul(U, V_part, out=_scratch("M", (16, o, V_part.shape[2]), dtype))  # the 16 products
        _output_transform(M.reshape(4, 4, o, n1 - n0, th, tw + 1), y[n0:n1])
    saved = WinogradSaved((n, c, h, wd), (ph, pw), U, V, (th, tw), x_dtype, w_dtype)
    return y, saved


def conv3x3_winograd_backward(saved, gy, need_gx=True, need_gw=True, gx_out=None):
    """Gradients of :func:`conv3x3_winograd_forward`, given the output gradient ``gy``.

    Args:
        saved: the :class:`WinogradSaved` the forward pass returned.
        gy: d(loss)/dy, shape (N, O, OH, OW).
        need_gx: compute d(loss)/dx.
        need_gw: compute d(loss)/dw (needs ``keep=True`` in the forward pass).
        gx_out: optional (N, C, H, W) array of x's dtype to write gx into.

    Returns:
        ``(gx, gw)``: gx of shape (N, C, H, W) in x's dtype, gw of shape
        (O, C, 3, 3) in w's dtype, both contiguous; None where not asked for.
    """
    n, c, h, wd = saved.x_shape
    ph, pw = saved.padding
    th, tw = saved.tiles
    U = saved.U
    o = U.shape[1]
    y_shape = (n, o, h + 2 * ph - 2, wd + 2 * pw - 2)
    if tuple(gy.shape) != y_shape:
        raise ValueError(f"conv3x3_winograd_backward: gy has shape {gy.shape}, expected {y_shape}")
    if need_gw and saved.V is None:
        raise ValueError("conv3x3_winograd_backward: the weight gradient needs keep=True in the forward pass")
    gy = gy.astype(U.dtype, copy=False)
    sign = _SIGN16.astype(U.dtype)[:, None, None]

    tiles = th * (tw + 1)
    U_t = np.ascontiguousarray((U * sign).transpose(0, 2, 1))    # (16, C, O), the signs put on U
    gw = None
    gU = np.zeros((16, o, c), dtype=U.dtype) if need_gw else None
    if gx_out is not None and (tuple(gx_out.shape) != (n, c, h, wd) or gx_out.dtype != saved.x_dtype):
        raise ValueError(f"conv3x3_winograd_backward: gx_out must be a {saved.x_dtype} array of shape "
                         f"{(n, c, h, wd)}, got {gx_out.dtype} {tuple(gx_out.shape)}")
    direct = gx_out is not None and gx_out.dtype == U.dtype
    gx = (gx_out if direct else np.empty((n, c, h, wd), dtype=U.dtype)) if need_gx else None
    for n0, n1 in _image_chunks(n, 16 * max(c, o) * tiles * U.itemsize):
        # gM' = A' gY A'^T = diag(s) gM diag(s): the sign trick of _SIGN16
        gM = _scratch("M", (16, o, (n1 - n0) * tiles), U.dtype)
        _output_transform_adjoint(gy[n0:n1], gM.reshape(4, 4, o, n1 - n0, th, tw + 1))
        if need_gw:
            V_part = saved.V[:, :, n0 * tiles:n1 * tiles]
            gU += np.matmul(gM, V_part.transpose(0, 2, 1), out=_scratch("gU", gU.shape, U.dtype))
        if need_gx:
            gV = np.matmul(U_t, gM, out=_scratch("gV", (16, c, gM.shape[2]), U.dtype))  # U^T gM
            _input_transform_adjoint(gV, ph, pw, th, tw, gx[n0:n1])
    if need_gw:
        gU *= sign                                  # gM' V^T -> gM V^T
        gw = _kernel_transform_adjoint(gU).astype(saved.w_dtype, copy=False)
    if need_gx:
        gx = gx.astype(saved.x_dtype, copy=False)
        if gx_out is not None and not direct:
            gx_out[...] = gx
            gx = gx_out
    return gx, gw


# --------------------------------------------------------------------------- kernel transform


def _kernel_transform(w):
    """U = G g G^T for every (o, c): (O, C, 3, 3) -> (16, O, C), contiguous."""
    g = G.astype(w.dtype)
    u = g @ w @ g.T                                             # (O, C, 4, 4)
    return np.ascontiguousarray(u.transpose(2, 3, 0, 1)).reshape(16, *w.shape[:2])


def _kernel_transform_adjoint(gU):
    """gw = G^T gU G for every (o, c): (16, O, C) -> (O, C, 3, 3), contiguous."""
    g = G.astype(gU.dtype)
    o, c = gU.shape[1:]
    gu = gU.reshape(4, 4, o, c).transpose(2, 3, 0, 1)           # (O, C, 4, 4), a view
    return np.ascontiguousarray(g.T @ gu @ g)


# --------------------------------------------------------------------------- input transform
#
# The tile layout. A tile (t, u) of the input transform needs padded rows
# 2t..2t+3 and columns 2u..2u+3. Split the padded input into its four
# *phases*, even or odd rows times even or odd columns:
#
#     phases[r, s][c, n, t, u] = xpad[n, c, 2t + r, 2u + s]     (2, 2, C, N, TH+1, TW+1)
#
# Then element (l, m) of tile (t, u) is phases[l % 2, m % 2] at (t + l // 2,
# u + m // 2): the same array shifted by 0 or 1 row and 0 or 1 column. With
# TW+1 columns per row, a shift by one column is a shift by one element of
# the flattened array, so each of the 16 transformed positions is ONE
# operation on long contiguous slices (fast), instead of many short strided
# runs. The price: every array of tiles (V, M and their gradients) carries
# one spare column, u = TW, which the products see as extra tiles (1/TW more
# work) and the output never reads. In the backward pass it is kept at zero.


def _input_transform(x, ph, pw, th, tw, V):
    """V = B^T d B of every 4x4 patch d of the zero-padded x: (N, C, H, W) -> V (16, C, N*TH*(TW+1)).

    V may be a view whose last axis is a slice of a larger array (a chunk of
    the batch); each (k, c) row of it must be contiguous.

    Three passes: split x into its phases (the only strided copy), then the
    rows of B^T down the patch columns (shifts by whole rows), then along
    the patch rows (shifts by one element).
    """
    n, c, h, wd = x.shape
    tw1 = tw + 1
    size = c * n * th * tw1                         # elements of one transformed position (i, j)
    x_cn = x.transpose(1, 0, 2, 3)                  # (C, N, H, W) view: the order of V
    phases = _scratch("phases", (2, 2, c, n, th + 1, tw1), x.dtype)
    for r in range(2):
        for s in range(2):
            _gather_phase(phases[r, s], x_cn, r - ph, s - pw)
    # rows[i, s] = row i of B^T down the columns of phase column s; flat, with
    # one spare zero at the end for the shifted read of the very last tile
    rows = _scratch("rows", (4, 2, size + 1), x.dtype)
    rows[:, :, size] = 0
    rows_tiles = rows[:, :, :size].reshape(4, 2, c, n, th, tw1)
    for i, ((la, sa), (lb, sb)) in enumerate(_INPUT_PAIRS):
        _signed_sum(rows_tiles[i],
                    phases[la % 2, :, :, :, la // 2:la // 2 + th], sa,
                    phases[lb % 2, :, :, :, lb // 2:lb // 2 + th], sb)
    V_ij = V.reshape(4, 4, c, n * th * tw1)
    for j, ((la, sa), (lb, sb)) in enumerate(_INPUT_PAIRS):
        # column m of the patch is phase column m % 2, shifted by m // 2 elements
        _signed_sum(V_ij[:, j],
                    rows[:, la % 2, la // 2:la // 2 + size].reshape(4, c, -1), sa,
                    rows[:, lb % 2, lb // 2:lb // 2 + size].reshape(4, c, -1), sb)


def _input_transform_adjoint(gV, ph, pw, th, tw, gx):
    """gx = the sum of B gV B^T over the patches, each put back where it came from (padding dropped).

    gV: (16, C, N*TH*(TW+1)), zero in the spare column; overwritten (used as
    scratch). gx: (N, C, H, W), fully written. The adjoint of
    each pass of :func:`_input_transform`, in reverse order. Row (column) l
    of a patch receives sum_j B^T[j, l] g_j:

        l = 0: g0    l = 1: g1 - g2 + g3    l = 2: g1 + g2 - g0    l = 3: -g3

    and since patches overlap, phase position p receives (l = p of its own
    patch) + (l = p + 2 of the previous patch).
    """
    n, c, h, wd = gx.shape
    tw1 = tw + 1
    size = c * n * th * tw1
    g = gV.reshape(4, 4, size)
    g0, g1, g2, g3 = g[:, 0], g[:, 1], g[:, 2], g[:, 3]   # each (4[i], size)
    # columns: rows[i, s] at flat position m gets
    #   s = 0: g0[m] + (g1 + g2 - g0)[m - 1]       s = 1: (g1 - g2 + g3)[m] - g3[m - 1]
    # (the spare element of the forward pass was a constant: no gradient)
    rows = _scratch("rows", (4, 2, size), gV.dtype)
    odd = rows[:, 1]
    np.subtract(g1, g2, out=odd)
    odd += g3
    odd[:, 1:] -= g3[:, :-1]
    g2 += g1
    g2 -= g0                                        # g1 + g2 - g0, in place
    np.add(g0[:, 1:], g2[:, :-1], out=rows[:, 0, 1:])
    rows[:, 0, 0] = g0[:, 0]
    del g, g0, g1, g2, g3, odd

    # rows of the patch: phase row p at patch row t gets, with r_i = rows[i]
    #   p = 0: r0[t] + (r1 + r2 - r0)[t - 1]      p = 1: (r1 - r2 + r3)[t] - r3[t - 1]
    r0, r1, r2, r3 = rows.reshape(4, 2, c, n, th, tw1)
    phases = _scratch("phases", (2, 2, c, n, th + 1, tw1), gV.dtype)
    odd = phases[1]
    np.subtract(r1, r2, out=odd[..., :th, :])
    odd[..., :th, :] += r3
    odd[..., th, :] = 0
    odd[..., 1:, :] -= r3
    r2 += r1
    r2 -= r0                                        # r1 + r2 - r0, in place
    even = phases[0]
    np.add(r0[..., 1:, :], r2[..., :-1, :], out=even[..., 1:th, :])
    even[..., 0, :] = r0[..., 0, :]
    even[..., th, :] = r2[..., th - 1, :]
    del rows, r0, r1, r2, r3

    gx_cn = gx.transpose(1, 0, 2, 3)                # write it in (C, N, H, W) order
    for r in range(2):
        for s in range(2):
            _scatter_phase(gx_cn, phases[r, s], r - ph, s - pw)


def _signed_sum(out, a, sign_a, b, sign_b):
    """out = sign_a * a + sign_b * b with signs +-1, as one add or subtract."""
    if sign_a > 0 and sign_b > 0:
        np.add(a, b, out=out)
    elif sign_a > 0:
        np.subtract(a, b, out=out)
    elif sign_b > 0:
        np.subtract(b, a, out=out)
    else:  # -a - b: not in B^T, kept for completeness
        np.add(a, b, out=out)
        np.negative(out, out=out)


def _phase_range(offset, size, count):
    """The t in [0, count) with 0 <= 2t + offset < size, as the range (first, stop)."""
    first = max(0, -(offset // 2))                  # ceil(-offset / 2)
    stop = min(count, (size - offset + 1) // 2)     # ceil((size - offset) / 2)
    return first, max(first, stop)


def _every_other(start, count):
    """The slice start, start + 2, ..., count items."""
    return slice(start, start + 2 * count - 1, 2)


def _gather_phase(dest, src, row0, col0):
    """dest[..., t, u] = src[..., 2t + row0, 2u + col0], and 0 where that is outside src."""
    t0, t1 = _phase_range(row0, src.shape[-2], dest.shape[-2])
    u0, u1 = _phase_range(col0, src.shape[-1], dest.shape[-1])
    if t1 > t0 and u1 > u0:
        dest[..., t0:t1, u0:u1] = src[..., _every_other(2 * t0 + row0, t1 - t0),
                                      _every_other(2 * u0 + col0, u1 - u0)]
    dest[..., :t0, :] = 0                           # the zero padding and spare tiles
    dest[..., t1:, :] = 0
    dest[..., t0:t1, :u0] = 0
    dest[..., t0:t1, u1:] = 0


def _scatter_phase(dest, src, row0, col0):
    """dest[..., 2t + row0, 2u + col0] = src[..., t, u] where that is inside dest (the adjoint of _gather_phase)."""
    t0, t1 = _phase_range(row0, dest.shape[-2], src.shape[-2])
    u0, u1 = _phase_range(col0, dest.shape[-1], src.shape[-1])
    if t1 > t0 and u1 > u0:
        dest[..., _every_other(2 * t0 + row0, t1 - t0),
             _every_other(2 * u0 + col0, u1 - u0)] = src[..., t0:t1, u0:u1]


# --------------------------------------------------------------------------- output transform


def _output_transform(M4, y):
    """y = A^T m A for every tile m (4x4 in M4), written into y (N, O, OH, OW); M4 is overwritten.

    M4: (4, 4, O, N, TH, TW+1). With A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]:
    first down the tile columns, ``S0 = m0 + m1 + m2`` and ``S1 = m1 - m2 -
    m3`` (in place of m0 and m1, whole contiguous blocks), then the same
    along the rows, the last operation writing straight into the strided
    view of y that holds output pixel (a, b) of every tile. An odd OH (OW)
    drops the second row (column) of the last tiles.
    """
    M4[0] += M4[1]
    M4[0] += M4[2]                                  # S0 = m0 + m1 + m2
    M4[1] -= M4[2]
    M4[1] -= M4[3]                                  # S1 = m1 - m2 - m3
    S = M4[:2]
    S[:, 0] += S[:, 1]
    S[:, 1] -= S[:, 2]
    y_on = y.transpose(1, 0, 2, 3)                  # (O, N, OH, OW) view: the order of M
    for a in range(2):
        for b in range(2):
            dest = y_on[:, :, a::2, b::2]           # output pixel (a, b) of every tile
            rows, cols = dest.shape[-2:]
            if b == 0:                              # S_a0 + S_a1 + S_a2
                np.add(S[a, 0, ..., :rows, :cols], S[a, 2, ..., :rows, :cols], out=dest)
            else:                                   # S_a1 - S_a2 - S_a3
                np.subtract(S[a, 1, ..., :rows, :cols], S[a, 3, ..., :rows, :cols], out=dest)


def _output_transform_adjoint(gy, gM4):
    """gM' = A' gY A'^T for every tile, A' = [[1, 0], [1, 1], [1, -1], [0, 1]] (A, last row negated).

    gy: (N, O, OH, OW). gM4: (4, 4, O, N, TH, TW+1), fully written, zero in
    the spare column. The corners (i, j in {0, 3}) are the four output
    pixels of the tile (a, b) -> (3a, 3b), copied from gy (zero past the edge
    of an odd OH or OW); rows 1 and 2 (columns 1 and 2) are the sum and the
    difference of rows 0 and 3 (columns 0 and 3).
    """
    gy_on = gy.transpose(1, 0, 2, 3)                # (O, N, OH, OW) view: the order of gM
    for a in range(2):
        for b in range(2):
            _gather_phase(gM4[3 * a, 3 * b], gy_on, a, b)
    corner_rows = gM4[::3]                          # rows 0 and 3
    np.add(corner_rows[:, 0], corner_rows[:, 3], out=corner_rows[:, 1])
    np.subtract(corner_rows[:, 0], corner_rows[:, 3], out=corner_rows[:, 2])
    np.add(gM4[0], gM4[3], out=gM4[1])
    np.subtract(gM4[0], gM4[3], out=gM4[2])
