"""Chat-UniVi's parameter-free DPC-KNN token merging (method §1.6), batched over frames.

Each frame's patch tokens are clustered by density-peak clustering with a k-nearest-neighbour density
(DPC-KNN, ``ChatUniVi/model/cluster.py: cluster_dpc_knn``); a cluster's feature is the mean of its
members (``merge_tokens`` with unit weights). Levels run in sequence, 256 -> 64 -> 32 -> 16 for
Chat-UniVi, and their outputs are concatenated into 112 tokens per frame.

Differences from the reference, all deliberate:

- **Deterministic tie-break.** The reference adds ``rand * 1e-6`` to the densities so that no two
  tokens share one. We use the lexicographic order (density, -index) instead: token ``j`` counts as
  denser than token ``i`` when its density is larger, or equal and ``j < i``. Cluster centres are the
  top scores under a stable sort (equal scores: lower index first), and a token equidistant to several
  centres joins the first of them (``argmin``). The result is a function of each frame alone, so a
  batch of frames gives exactly what one-at-a-time calls give. On inputs without exact ties this is
  the reference algorithm without its noise.
- **Exact mean.** The reference divides by ``count + 1e-6``; we divide by ``count`` (relative
  difference 1e-6 / count).
- **Precision.** Distances are float32 as in the reference; cluster means are accumulated in float32
  across levels and cast back to the input dtype once (the reference merges in the input dtype,
  e.g. bf16, at each level).

Batch invariance is exact on CPU (same float32 ops per row). On CUDA the distance and mean GEMMs may
pick other kernels for other batch sizes, so results can differ in the last float32 bit (3.6e-7 seen
on an H200 for 24 x 256 x 1024 inputs); and a bf16 tower's features already differ more than that
between batch sizes, which can move tokens near a tie to another cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vrshq.vision_config import TokenMergeConfig, effective_knn_k

__all__ = [
    "ClusterAssignment",
    "TokenMerger",
    "dpc_knn_cluster",
    "dpc_knn_merge",
    "grid_position_embedding",
    "merge_clusters",
]


@dataclass(frozen=True)
class ClusterAssignment:
    """Result of one DPC-KNN clustering.

    Attributes:
        centers: ``(B, M)`` long, token index of each cluster centre, by decreasing score.
        labels: ``(B, N)`` long in ``[0, M)``, the cluster of each token; ``labels[b, centers[b, m]] == m``.
        density: ``(B, N)`` float32 local density ``rho``.
        delta: ``(B, N)`` float32 distance to the nearest denser token ``delta``; the centre score is
            ``rho * delta``.
    """

    centers: Tensor
    labels: Tensor
    density: Tensor
    delta: Tensor


def _check_tokens(x: Tensor, *, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, N, C), got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, N, C), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def dpc_knn_cluster(x: Tensor, *, num_clusters: int, k: int) -> ClusterAssignment:
    """Cluster the tokens of every batch row with DPC-KNN (no parameters, no gradient).

    Definitions (per row; ``d(i, j) = ||x_i - x_j|| / sqrt(C)``, self included in the k nearest):

    - density ``rho_i = exp(-mean_{j in kNN(i)} d(i, j)^2)``;
    - ``delta_i = min d(i, j)`` over denser tokens ``j``; for the densest token, ``max_{i,j} d(i, j)``;
    - the ``num_clusters`` tokens with the largest ``rho_i * delta_i`` are the centres;
    - every token joins its nearest centre; a centre always joins its own cluster.

    Args:
        x: ``(B, N, C)`` token features (any float dtype; distances are computed in float32).
        num_clusters: ``M``, with ``1 <= M <= N``.
        k: nearest neighbours for the density, ``1 <= k <= N``. This is the k actually used; see
            :func:`vrshq.vision_config.effective_knn_k` for Chat-UniVi's per-level rule.

    Returns:
        :class:`ClusterAssignment` with ``centers (B, M)`` and ``labels (B, N)``.

    Example:
        >>> pts = torch.tensor([[[0.0], [0.1], [0.2], [10.0], [10.1]]])
        >>> dpc_knn_cluster(pts, num_clusters=2, k=2).labels.tolist()
        [[0, 0, 0, 1, 1]]
    """
    _check_tokens(x)
    batch, num_tokens, channels = x.shape
    if not 1 <= num_clusters <= num_tokens:
        raise ValueError(f"num_clusters must be in [1, N={num_tokens}], got {num_clusters}")
    if not 1 <= k <= num_tokens:
        raise ValueError(f"k must be in [1, N={num_tokens}], got {k}")
    with torch.no_grad():
        xf = x.detach().float()
        dist = torch.cdist(xf, xf) / (channels**0.5)  # (B, N, N)

        knn_dist = torch.topk(dist, k=k, dim=-1, largest=False).values  # (B, N, k)
        density = torch.exp(-(knn_dist**2).mean(dim=-1))  # (B, N)

        # denser[b, i, j]: token j precedes token i in the order (density desc, index asc).
        index = torch.arange(num_tokens, device=x.device)
        dens_j = density[:, None, :]
        dens_i = density[:, :, None]
        denser = (dens_j > dens_i) | ((dens_j == dens_i) & (index[None, None, :] < index[None, :, None]))
        dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]  # (B, 1, 1)
        delta = torch.where(denser, dist, dist_max).min(dim=-1).values  # (B, N)

        score = delta * density
        centers = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :num_clusters]

        dist_to_centers = torch.gather(dist, 1, centers[:, :, None].expand(batch, num_clusters, num_tokens))
        labels = dist_to_centers.argmin(dim=1)  # (B, N); first centre on ties
        cluster_ids = torch.arange(num_clusters, device=x.device).expand(batch, num_clusters)
        labels = labels.scatter(1, centers, cluster_ids)
    return ClusterAssignment(centers=centers, labels=labels, density=density, delta=delta)


def merge_clusters(x: Tensor, labels: Tensor, num_clusters: int) -> Tensor:
    """Mean of the member tokens of each cluster.

    Args:
        x: ``(B, N, C)`` token features.
        labels: ``(B, N)`` long cluster ids in ``[0, num_clusters)``.
        num_clusters: ``M``.

    Returns:
        ``(B, M, C)`` cluster features in float32 (empty clusters, impossible for
        :func:`dpc_knn_cluster` output, give zeros).
    """
    _check_tokens(x)
    if labels.shape != x.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(x.shape[:2])} (B, N), got {tuple(labels.shape)}")
    cluster_ids = torch.arange(num_clusters, device=x.device)
    members = (labels[:, None, :] == cluster_ids[None, :, None]).float()  # (B, M, N)
    sums = torch.bmm(members, x.float())  # (B, M, C)
    counts = members.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return sums / counts


def grid_position_embedding(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine embedding of a ``grid x grid`` patch grid (row-major): ``(grid * grid, dim)``.

    The first half of the channels encodes the row, the second the column, each as sines and cosines of
    ``dim // 4`` frequencies from one cycle over the grid down to 1/8 of a patch (``dim`` a multiple of 4).
    Values lie in [-1, 1]; no parameters, so no checkpoint changes.
    """
    if dim % 4 or dim < 4:
        raise ValueError(f"dim must be a positive multiple of 4, got {dim}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    steps = dim // 4
    # angular frequencies from 2*pi/grid (one cycle over the grid) geometrically down to 2*pi/(8*grid)
    omega = 2 * math.pi / grid * torch.logspace(0, -math.log10(8), steps, dtype=torch.float64)
    coords = torch.arange(grid, dtype=torch.float64) + 0.5
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(values: Tensor) -> Tensor:
        angles = values.flatten()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def dpc_knn_merge(
    x: Tensor, *, cluster_counts: tuple[int, ...], knn_k: tuple[int, ...], positions: Tensor | None = None
) -> Tensor:
    """All merge levels: cluster, average, feed the averages to the next level; concatenate the levels.

    Args:
        x: ``(B, N, C)`` patch tokens (CLS already dropped).
        cluster_counts: clusters per level, e.g. ``(64, 32, 16)``.
        knn_k: configured k per level, e.g. ``(5, 3, 3)``; Chat-UniVi's
            :func:`~vrshq.vision_config.effective_knn_k` rule is applied.
        positions: optional ``(N, C)`` or ``(B, N, C)`` embedding of each patch's position (not Chat-UniVi, a
            from-scratch aid, ``TokenMergeConfig.centroid_position_scale``). It is averaged with the same
            cluster assignments as ``x`` and added to each level's output; the clustering (and the features the
            next level clusters) never see it.

    Returns:
        ``(B, sum(cluster_counts), C)`` in the dtype of ``x``.
    """
    _check_tokens(x)
    if len(cluster_counts) != len(knn_k):
        raise ValueError(f"cluster_counts {cluster_counts} and knn_k {knn_k} must have the same length")
    if positions is not None and positions.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"positions must have shape (N, C) = {tuple(x.shape[-2:])}, got {tuple(positions.shape)}")
    levels = []
    tokens = x.float()
    where = None if positions is None else positions.to(device=x.device, dtype=torch.float32).expand_as(tokens)
    for num_clusters, k in zip(cluster_counts, knn_k, strict=True):
        assignment = dpc_knn_cluster(tokens, num_clusters=num_clusters, k=effective_knn_k(k, num_clusters))
        tokens = merge_clusters(tokens, assignment.labels, num_clusters)
        if where is None:
            levels.append(tokens)
        else:
            where = merge_clusters(where, assignment.labels, num_clusters)
            levels.append(tokens + where)
    return torch.cat(levels, dim=1).to(x.dtype)


class TokenMerger(nn.Module):
    """Parameter-free module form of :func:`dpc_knn_merge` (Chat-UniVi's ``ctm0..2`` + identity ``TCBlock``).

    Args:
        cfg: the merge levels.

    Example:
        >>> merger = TokenMerger(TokenMergeConfig(cluster_counts=(4, 2), knn_k=(3, 1)))
        >>> merger(torch.randn(3, 16, 8)).shape
        torch.Size([3, 6, 8])
    """

    def __init__(self, cfg: TokenMergeConfig) -> None:
        super().__init__()
        if not isinstance(cfg, TokenMergeConfig):
            raise TypeError(f"cfg must be a TokenMergeConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    @property
    def tokens_per_frame(self) -> int:
        """Output tokens per input row."""
        return self.cfg.tokens_per_frame

    def forward(self, x: Tensor) -> Tensor:
        """Merge ``(B, N, C)`` patch tokens into ``(B, tokens_per_frame, C)``."""
        _check_tokens(x)
        self.cfg.check_input_tokens(x.shape[1], owner="TokenMerger")
        return dpc_knn_merge(x, cluster_counts=self.cfg.cluster_counts, knn_k=self.cfg.knn_k)
