"""Deterministic generators of model-like data for the benchmarks.

Real model weights are the bulk of what an AI node holds, and they are nearly
incompressible: the low (mantissa) bytes of every value are noise, only the byte that
carries the sign and the exponent is skewed. Benchmarks that run on ``os.urandom``
flatter nothing but compression heuristics, and benchmarks on zeros or text flatter
zstd; this module produces bytes with the statistics of real weights instead.

How the bytes are made
----------------------
A seed and a dtype name select a BLAKE3 extendable-output stream (fast, ~1.4 GB/s on
one core, and *seekable*). The random bytes are used as they are for the mantissa
bytes; the byte holding sign and exponent is passed through a 256-entry table built
from the distribution of the exponent of a Gaussian weight N(0, sigma^2) (sigma 0.02
by default, typical of transformer weights), so it takes a handful of values with
realistic frequencies. Layouts (little-endian, as safetensors and PyTorch write them):

``bf16``  2 bytes/value: [exp LSB | 7 mantissa bits] [sign | exp >> 1]
``fp16``  2 bytes/value: [8 mantissa bits] [sign | 5-bit exp | 2 mantissa bits]
``fp32``  4 bytes/value: 3 mantissa bytes, then [sign | exp >> 1]
``int8``  1 byte/value: symmetric int8 quantization of a Gaussian (scale = 4 sigma / 127)
``text``  English-like words and JSON-ish punctuation (tokenizers, configs, logs);
          compresses about 3x with zstd, for contrast
``random`` the raw stream: stands for already compressed or encrypted artifacts
          (archives, media, 4-bit quantized weights), which nothing compresses

Because the stream is seekable, the byte at offset ``i`` of ``(seed, dtype)`` is the
same whichever way it is produced: :func:`model_like_bytes`, :func:`model_like_block`
at any offset, :func:`iter_model_blocks` with any block size, or
:func:`write_model_file`. Two different seeds share no content (no dedup between
them); to build a "fine-tuned" variant of a model, splice blocks of the base seed
with blocks of another seed at chosen offsets.

Import it as ``from datagen import ...`` from scripts in ``bench/`` (Python puts the
script's folder on ``sys.path``). It uses only the standard library and ``blake3``.
Running it as a script writes one file: ``python bench/datagen.py OUT --size-mib 64``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
from collections.abc import Iterator

import blake3

__all__ = [
    "BLOCK_SIZE",
    "DTYPES",
    "iter_model_blocks",
    "model_like_block",
    "model_like_bytes",
    "text_like_bytes",
    "write_model_file",
]

MiB = 1024 * 1024
BLOCK_SIZE = 8 * MiB  # streaming buffer: memory stays around this whatever the size
DEFAULT_SIGMA = 0.02
_TEXT_BLOCK = 64 * 1024  # text is generated in independent, seekable 64 KiB blocks

# dtype name -> bytes per value (the alignment the generator works in)
DTYPES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4, "int8": 1, "text": 1, "random": 1}


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        known = ", ".join(sorted(DTYPES))
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {known}")


def _half_normal_cdf(x: float, sigma: float) -> float:
    """P(|X| < x) for X ~ N(0, sigma^2)."""
    return math.erf(x / (sigma * math.sqrt(2.0)))


def _quantile_table(probs: dict[int, float], levels: int) -> list[int]:
    """Map ``levels`` equally likely draws onto the keys of ``probs`` (inverse CDF)."""
    keys = sorted(probs)
    total = sum(probs.values())
    out: list[int] = []
    for k in range(levels):
        u = (k + 0.5) / levels * total
        acc = 0.0
        for key in keys:
            acc += probs[key]
            if u < acc:
                out.append(key)
                break
        else:
            out.append(keys[-1])
    return out


def _exponent_probs(bias: int, max_exp: int, sigma: float) -> dict[int, float]:
    """Distribution of the biased exponent field of a float holding N(0, sigma^2).

    Exponent 0 stands for zero and subnormals (|x| below the smallest normal).
    """
    probs: dict[int, float] = {}
    lo = 2.0 ** (1 - bias)
    probs[0] = _half_normal_cdf(lo, sigma)
    for e in range(1, max_exp + 1):
        a, b = 2.0 ** (e - bias), 2.0 ** (e - bias + 1)
        probs[e] = _half_normal_cdf(b, sigma) - _half_normal_cdf(a, sigma)
    return probs


@functools.lru_cache(maxsize=32)
def _high_byte_table(dtype: str, sigma: float) -> bytes:
    """256-entry translation table: one random byte -> the sign/exponent byte."""
    table = bytearray(256)
    if dtype in ("bf16", "fp32"):
        # high byte = sign(1) | exponent >> 1 (7 bits); 8-bit exponent, bias 127
        exp = _exponent_probs(127, 254, sigma)
        high: dict[int, float] = {}
        for e, p in exp.items():
            high[e >> 1] = high.get(e >> 1, 0.0) + p
        quant = _quantile_table(high, 128)
        for r in range(256):
            table[r] = (r >> 7) << 7 | quant[r & 0x7F]
    elif dtype == "fp16":
        # high byte = sign(1) | exponent(5) | 2 mantissa bits; bias 15
        exp = _exponent_probs(15, 30, sigma)
        quant = _quantile_table(exp, 32)
        for r in range(256):
            table[r] = (r >> 7) << 7 | quant[(r >> 2) & 0x1F] << 2 | (r & 0x3)
    elif dtype == "int8":
        # symmetric int8 quantization, clip at 4 sigma: q ~ round(N(0, (127/4)^2))
        s = 127.0 / 4.0
        probs = {}
        for q in range(-127, 128):
            a = 0.5 * (1 + math.erf((q - 0.5) / (s * math.sqrt(2.0))))
            b = 0.5 * (1 + math.erf((q + 0.5) / (s * math.sqrt(2.0))))
            probs[q] = b - a
        quant = _quantile_table(probs, 256)
        # shuffle the draw order deterministically so neighbouring random bytes do not
        # map to neighbouring values (it does not change the statistics, only looks)
        order = list(range(256))
        random.Random(0x1A7).shuffle(order)
        for r in range(256):
            table[r] = quant[order[r]] & 0xFF
    else:  # pragma: no cover - guarded by _check_dtype
        raise ValueError(dtype)
    return bytes(table)


@functools.lru_cache(maxsize=64)
def _stream(seed: int | str, dtype: str) -> blake3.blake3:
    return blake3.blake3(f"amber/bench/datagen/v1/{dtype}/{seed}".encode())


_WORDS = (
    "the a of to and in is that for it as was with on be by at this from have or are "
    "model agent memory user assistant tool call result token weight layer attention "
    "checkpoint restore node edge vault chunk sync error retry ok true false null "
    "temperature prompt system content role name id time step loss eval batch epoch "
    "config version seed dataset learning rate warmup decay embedding vocab merges "
    "please thanks could you would should summary answer question context window "
    "sensor camera reading status healthy degraded offline online queue backlog"
).split()
_SEPARATORS = [" "] * 12 + [", ", ". ", '": "', '", "', "\n", '{"', '"}\n', ": ", " 0.", " 1"]


def _text_block(seed: int | str, index: int) -> bytes:
    """One 64 KiB block of text, a pure function of (seed, index)."""
    block_seed = int.from_bytes(
        blake3.blake3(f"amber/bench/datagen/v1/text/{seed}/{index}".encode()).digest(8), "big"
    )
    rng = random.Random(block_seed)
    parts: list[str] = []
    size = 0
    while size < _TEXT_BLOCK:
        words = rng.choices(_WORDS, k=256)
        seps = rng.choices(_SEPARATORS, k=256)
        piece = "".join(w + s for w, s in zip(words, seps, strict=True))
        parts.append(piece)
        size += len(piece)
    return "".join(parts).encode()[:_TEXT_BLOCK]


def _text_range(seed: int | str, offset: int, length: int) -> bytes:
    first, last = offset // _TEXT_BLOCK, (offset + length - 1) // _TEXT_BLOCK
    raw = b"".join(_text_block(seed, i) for i in range(first, last + 1))
    start = offset - first * _TEXT_BLOCK
    return raw[start : start + length]


def model_like_block(
    seed: int | str,
    dtype: str,
    offset: int,
    length: int,
    *,
    sigma: float = DEFAULT_SIGMA,
) -> bytes:
    """Bytes ``[offset, offset + length)`` of the stream selected by ``(seed, dtype)``.

    Any offset and length work (they need not be aligned to a value); the result is
    identical to the same slice of :func:`model_like_bytes`. ``sigma`` is the standard
    deviation of the simulated weights (it shapes the exponent byte).
    """
    _check_dtype(dtype)
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be non-negative")
    if length == 0:
        return b""
    if dtype == "text":
        return _text_range(seed, offset, length)
    width = DTYPES[dtype]
    start = offset - offset % width
    end = -(-(offset + length) // width) * width
    buf = _stream(seed, dtype).digest(length=end - start, seek=start)
    if dtype == "random":
        return buf
    table = _high_byte_table(dtype, sigma)
    if dtype == "int8":
        buf = buf.translate(table)
    else:
        arr = bytearray(buf)
        arr[width - 1 :: width] = arr[width - 1 :: width].translate(table)
        buf = bytes(arr)
    if start == offset and end == offset + length:
        return buf
    return buf[offset - start : offset - start + length]


def iter_model_blocks(
    size: int,
    seed: int | str,
    dtype: str = "bf16",
    *,
    offset: int = 0,
    block_size: int = BLOCK_SIZE,
    sigma: float = DEFAULT_SIGMA,
) -> Iterator[bytes]:
    """Yield ``size`` bytes of the stream, starting at ``offset``, in ``block_size`` pieces.

    Memory stays at about one block whatever ``size`` is.
    """
    _check_dtype(dtype)
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    pos, end = offset, offset + size
    while pos < end:
        n = min(block_size, end - pos)
        yield model_like_block(seed, dtype, pos, n, sigma=sigma)
        pos += n


def model_like_bytes(
    size: int, seed: int | str = 0, dtype: str = "bf16", *, sigma: float = DEFAULT_SIGMA
) -> bytes:
    """``size`` bytes of model-like data, in memory (for files, use :func:`write_model_file`)."""
    return b"".join(iter_model_blocks(size, seed, dtype, sigma=sigma))


def text_like_bytes(size: int, seed: int | str = 0) -> bytes:
    """``size`` bytes of compressible English/JSON-like text (configs, tokenizers, logs)."""
    return model_like_bytes(size, seed, "text")


def write_model_file(
    path: str | os.PathLike[str],
    size: int,
    seed: int | str = 0,
    dtype: str = "bf16",
    *,
    sigma: float = DEFAULT_SIGMA,
    block_size: int = BLOCK_SIZE,
    fsync: bool = False,
) -> str:
    """Write ``size`` bytes of model-like data to ``path``; return its BLAKE3 hex digest.

    Streams in ``block_size`` buffers (8 MiB by default), so a 10 GiB file needs no
    more memory than a small one. Creates missing parent folders and replaces an
    existing file. The digest is plain (unkeyed) BLAKE3 of the whole file, handy to
    check a restore against.
    """
    _check_dtype(dtype)
    if size < 0:
        raise ValueError("size must be non-negative")
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    digest = blake3.blake3()
    with open(path, "wb", buffering=0) as f:
        for block in iter_model_blocks(size, seed, dtype, block_size=block_size, sigma=sigma):
            digest.update(block)
            f.write(block)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return digest.hexdigest()


def _main() -> None:
    p = argparse.ArgumentParser(description="Write a deterministic model-like data file.")
    p.add_argument("path", help="file to write (parent folders are created)")
    p.add_argument("--size-mib", type=float, default=64.0, help="size in MiB (default 64)")
    p.add_argument("--seed", default="0", help="seed (any string; default 0)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="default bf16")
    args = p.parse_args()
    size = int(args.size_mib * MiB)
    digest = write_model_file(args.path, size, args.seed, args.dtype)
    print(f"wrote {size} bytes of {args.dtype} (seed {args.seed}) blake3 {digest}")


if __name__ == "__main__":
    _main()
