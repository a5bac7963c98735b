"""Noise as a function of per-sample seeds only.

Sample ``i`` of any run is drawn from its own generator seeded with ``seeds[i]``, so the same
seeds give the same noise (and samples) for any batch size, any order, and any number of
processes. Noise is drawn on the CPU in float64 and then cast, so it is also identical across
devices and dtypes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["noise_from_seeds", "parse_seeds", "check_seed_count", "shard_seeds"]


def noise_from_seeds(
    seeds: Iterable[int],
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard normal noise ``[len(seeds), *shape]``, sample ``i`` from ``seeds[i]`` alone."""
    seeds = [int(s) for s in seeds]
    out = torch.empty((len(seeds), *shape), dtype=torch.float64)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        if seed < 0:
            raise ValueError(f"seeds must be non-negative integers, got {seed}.")
        gen.manual_seed(seed)
        out[i] = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    return out.to(dtype=dtype, device=device)


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """Parse ``"0-63"``, ``"0-9,20,30-31"``, an int N (= 0..N−1) or a list of ints.

    Seeds are integers in ``[0, 2**63)`` (they are stored as int64); anything else is a
    ``ValueError``."""
    if isinstance(spec, int):
        check_seed_count(spec, f"a seed count of {spec}")
        return list(range(spec))
    if not isinstance(spec, str):
        return _in_range([int(s) for s in spec], spec)
    return _in_range(_parse_seed_string(spec), spec)


MAX_SEED = 2**63 - 1

#: the most seeds one seed list may hold: 10,000,000 is 200× the 50,000 samples of an FID, and
#: the list alone (Python ints) takes about 0.4 GB; 10¹¹ seeds would fill any machine's memory
MAX_SEEDS = 10_000_000


def check_seed_count(count: int, what: str) -> None:
    """``ValueError`` when a seed list would hold more than :data:`MAX_SEEDS` seeds (checked
    before the list is made); ``what`` names the setting in the message."""
    if count > MAX_SEEDS:
        raise ValueError(
            f"{what} asks for {count:,} samples; one run takes at most "
            f"{MAX_SEEDS:,} (the seed list alone would take about {count * 40 / 1e9:.0f} GB of "
            "memory). Split the range into runs of at most that many seeds."
        )


def _in_range(seeds: list[int], spec) -> list[int]:
    bad = next((s for s in seeds if not 0 <= s <= MAX_SEED), None)
    if bad is not None:
        raise ValueError(
            f"seed {bad} in {str(spec)[:60]!r} is outside 0 … 2**63 − 1 ({MAX_SEED}); seeds are "
            "stored as 64-bit integers. Use smaller seeds."
        )
    return seeds


def _parse_seed_string(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"bad seed range {part!r}: the end is below the start.")
            check_seed_count(len(out) + b - a + 1, f"the seed list {spec[:60]!r}")
            out.extend(range(a, b + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ValueError(
                f"bad seed spec {spec!r}; use ranges and lists such as '0-63' or '0-9,20,30-31'."
            )
    return out


def format_seeds(seeds: Sequence[int]) -> str:
    """The inverse of :func:`parse_seeds`: runs of consecutive seeds as ranges, in order
    (``[0, 1, 2, 5]`` → ``"0-2,5"``)."""
    parts: list[str] = []
    seeds = [int(s) for s in seeds]
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def shard_seeds(seeds: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The seeds of one rank: a strided split with no padding, so no seed is served twice."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}.")
    return list(seeds)[rank::world_size]
