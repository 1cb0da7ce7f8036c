"""Offset bins: box offsets classified into discrete bins instead of regressed (Qiu et al.,
"Offset Bin Classification Network for Accurate Object Detection", CVPR 2020, §3.2).

Each box offset t (one of tx, ty, tw, th of eq. 1, in the units of a `Box2BoxTransform`'s
weighted deltas) is coded by one stage or by K stages of bins (hierarchical focusing, eq. 11).
A stage has n bins over a range a (eq. 5, Fig. 4):

* labels 0 .. m - 1 (m = n - 2): the m uniform bins of width w = 2a / m over (-a, a), bin l
  being [-a + l w, -a + (l + 1) w) with representative offset its centre -a + (l + 1/2) w;
* label m: the outer bin (-inf, -a], representative -a;
* label m + 1: the outer bin [a, +inf), representative a.

(The paper writes l in [0, m] for the centres and m + 1, m + 2 for the outer bins, which would
make n = m + 3 labels; with n = m + 2 as it states, the consistent reading is the one above.)

A prediction is one logit per bin; it decodes to the representative of the argmax bin or to
the softmax expectation of the representatives (eq. 10). With K stages, stage k has its own
bins (n_k, a_k) and codes what is left of the offset after the stages before it: its target
is ``t - sum_{j<k} t^j``, t^j being stage j's decoded prediction (detached), and the decoded
offset is ``sum_k t^k`` (eq. 11). When stage k - 1 picked the right bin, that residual lies
within the picked bin, so a_k < w_{k-1} makes stage k focus on it (§3.2.4); when it picked a
wrong one, the residual falls in stage k's outer bins, which move the offset by a_k towards
the truth. The paper's a_2 = 0.15 with a_1 = 3, n_1 = n_2 = 20 is the case w_2 = w_1 / n_2: the
n_2 bins of width w_1 / n_2 tile the stage-1 bin, its two edge bins being the outer ones.

Shape legend:
    ...: any leading shape (e.g. R boxes x 4 coordinates)
    n: bins of one stage; N: bins of all stages, sum_k n_k; K: stages

Pure tensor functions, plus :class:`OffsetBinCoder` (the K-stage scheme: encode, decode, loss).
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bin_width",
    "bin_representatives",
    "offsets_to_bins",
    "argmax_offsets",
    "expected_offsets",
    "OffsetBinCoder",
]


def bin_width(num_bins: int, offset_range: float) -> float:
    """w = 2a / m, the width of the m = n - 2 uniform bins over (-a, a)."""
    return 2.0 * offset_range / (num_bins - 2)


def bin_representatives(
    num_bins: int,
    offset_range: float,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """The representative offset t^r_l of every bin label l (eq. 5, read as n = m + 2).

    Returns:
        Tensor[n]: the m bin centres -a + (l + 1/2) w, then -a, then a.
    """
    m = num_bins - 2
    w = bin_width(num_bins, offset_range)
    centres = -offset_range + (torch.arange(m, device=device, dtype=dtype) + 0.5) * w
    ends = torch.tensor([-offset_range, offset_range], device=device, dtype=centres.dtype)
    return torch.cat([centres, ends])


def offsets_to_bins(offsets: Tensor, num_bins: int, offset_range: float) -> Tensor:
    """The bin label of each offset.

    Args:
        offsets (Tensor[...]): float offsets.
        num_bins (int): n > 2.
        offset_range (float): a > 0.

    Returns:
        Tensor[...], int64: in [0, m) for offsets in (-a, a), m for t <= -a, m + 1 for t >= a.
    """
    m = num_bins - 2
    w = bin_width(num_bins, offset_range)
    inner = torch.floor((offsets + offset_range) / w).clamp_(0, m - 1).long()
    labels = torch.where(offsets <= -offset_range, torch.full_like(inner, m), inner)
    return torch.where(offsets >= offset_range, torch.full_like(inner, m + 1), labels)


def argmax_offsets(logits: Tensor, offset_range: float) -> Tensor:
    """The representative offset of the highest-scoring bin.

    Args:
        logits (Tensor[..., n]): bin logits (n = logits.shape[-1]).
        offset_range (float): a.

    Returns:
        Tensor[...]: offsets, not differentiable w.r.t. the logits.
    """
    reps = bin_representatives(logits.shape[-1], offset_range, logits.device, logits.dtype)
    return reps[logits.argmax(dim=-1)]


def expected_offsets(logits: Tensor, offset_range: float) -> Tensor:
    """The softmax expectation of the representative offsets, sum_l p_l t^r_l (eq. 10).

    Args:
        logits (Tensor[..., n]): bin logits (n = logits.shape[-1]).
        offset_range (float): a.

    Returns:
        Tensor[...]: offsets in [-a, a], differentiable w.r.t. the logits.
    """
    reps = bin_representatives(logits.shape[-1], offset_range, logits.device, logits.dtype)
    return F.softmax(logits, dim=-1) @ reps


class OffsetBinCoder:
    """K stages of offset bins (hierarchical focusing, eq. 11; K = 1 is plain bin
    classification): stage k has `num_bins[k]` bins over `(-offset_ranges[k],
    offset_ranges[k])`; the logits of all stages are concatenated on the last dimension.

    Args:
        num_bins (Sequence[int]): n_k of each stage, each > 2 (paper: 20 at every stage).
        offset_ranges (Sequence[float]): a_k of each stage, a_1 > 0 (paper: 3) and
            0 < a_k < w_{k-1} for k >= 2 (paper: a_2 = 0.15).
        expectation (bool): decode every stage by the softmax expectation (eq. 10) instead of
            the argmax bin's representative.

    Raises:
        ValueError: on bin numbers or ranges out of those bounds.
    """

    def __init__(
        self, num_bins: Sequence[int], offset_ranges: Sequence[float], expectation: bool = True
    ):
        num_bins, offset_ranges = [int(n) for n in num_bins], [float(a) for a in offset_ranges]
        if not num_bins or len(num_bins) != len(offset_ranges):
            raise ValueError(
                f"num_bins {num_bins} and offset_ranges {offset_ranges}: one value per stage, "
                "at least one stage"
            )
        for k, (n, a) in enumerate(zip(num_bins, offset_ranges)):
            if n <= 2 or a <= 0:
                raise ValueError(f"stage {k + 1}: needs num_bins > 2 and offset_range > 0")
            if k and a >= bin_width(num_bins[k - 1], offset_ranges[k - 1]):
                raise ValueError(
                    f"stage {k + 1}: offset_range {a} must be < the bin width of stage {k} "
                    f"({bin_width(num_bins[k - 1], offset_ranges[k - 1])})"
                )
        self.num_bins = num_bins
        self.offset_ranges = offset_ranges
        self.expectation = bool(expectation)

    @property
    def num_stages(self) -> int:
        """K."""
        return len(self.num_bins)

    @property
    def total_bins(self) -> int:
        """N = sum_k n_k, the logits per offset."""
        return sum(self.num_bins)

    def split(self, logits: Tensor) -> List[Tensor]:
        """Tensor[..., N] -> the K stages' logits, Tensor[..., n_k] each."""
        if logits.shape[-1] != self.total_bins:
            raise ValueError(
                f"logits end in {logits.shape[-1]} bins, the coder has {self.total_bins} "
                f"({self.num_bins})"
            )
        return list(logits.split(self.num_bins, dim=-1))

    def stage_offsets(self, logits: Tensor) -> Tensor:
        """t^k of every stage: each stage's logits decoded by argmax or expectation.

        Args:
            logits (Tensor[..., N]): bin logits of all stages.

        Returns:
            Tensor[..., K]: per-stage offsets (differentiable w.r.t. the logits with
            expectation decoding).
        """
        decode = expected_offsets if self.expectation else argmax_offsets
        return torch.stack(
            [decode(s, a) for s, a in zip(self.split(logits), self.offset_ranges)], dim=-1
        )

    def decode(self, logits: Tensor) -> Tensor:
        """The predicted offsets, t = sum_k t^k (eq. 11).

        Args:
            logits (Tensor[..., N]): bin logits of all stages.

        Returns:
            Tensor[...]: offsets.
        """
        return self.stage_offsets(logits).sum(dim=-1)

    def encode(self, offsets: Tensor, logits: Optional[Tensor] = None) -> Tensor:
        """The bin label of each offset at every stage: stage 1 codes the offset, stage k
        what the decoded predictions of stages 1 .. k-1 leave of it.

        Args:
            offsets (Tensor[...]): target offsets t*.
            logits (Tensor[..., N] or None): the predictions whose earlier stages define the
                later stages' targets (not differentiated); only needed when K > 1.

        Returns:
            Tensor[..., K], int64: labels, each in [0, n_k).
        """
        if self.num_stages > 1 and logits is None:
            raise ValueError(f"{self.num_stages}-stage targets depend on the predicted logits")
        stage_offsets = None if logits is None else self.stage_offsets(logits.detach())
        labels, residual = [], offsets
        for k, (n, a) in enumerate(zip(self.num_bins, self.offset_ranges)):
            labels.append(offsets_to_bins(residual, n, a))
            if k + 1 < self.num_stages:
                residual = residual - stage_offsets[..., k]
        return torch.stack(labels, dim=-1)

    def loss(self, logits: Tensor, offsets: Tensor) -> Tensor:
        """Cross entropy of the bin logits against the labels of `offsets` (eq. 7), summed over
        the offsets and the stages.

        Args:
            logits (Tensor[..., N]): bin logits of all stages.
            offsets (Tensor[...]): target offsets t*, same leading shape.

        Returns:
            Tensor[]: the summed loss (0 for no offsets).
        """
        labels = self.encode(offsets, logits)
        return sum(
            F.cross_entropy(s.reshape(-1, n), labels[..., k].reshape(-1), reduction="sum")
            for k, (s, n) in enumerate(zip(self.split(logits), self.num_bins))
        )

    def __repr__(self) -> str:
        decode = "expectation" if self.expectation else "argmax"
        return (
            f"OffsetBinCoder(num_bins={self.num_bins}, offset_ranges={self.offset_ranges}, "
            f"decode={decode})"
        )
