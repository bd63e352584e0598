"""MaSSL's memory bank as MerMED-FM keeps it (yangzhou12/MerMED `pretraining/memory_bank.py`,
`random_partition.py`, `criterion.py`; sthalles/MaSSL the same files without the modality labels).

- The bank is a queue of `size` (`out_dim`, 131072) L2-normalised teacher embeddings (`bottleneck_dim` wide),
  initialised from a normal draw normalised per entry; both networks' views are scored against it by dot product
  (the bank plays the part of DINO's prototypes: there is no last layer, hence nothing to freeze in epoch 1).
- Each training step enqueues the teacher's embeddings of the SECOND global view of every image of the global
  batch (all-gathered over the processes first, rank order, so every rank holds the same bank), after the step's
  scores were computed; the oldest entries are overwritten (a ring).
- MerMED's addition: every entry carries the modality label of its image, and once the bank is full (no entry
  left from the random start), an image's scores against entries of other modalities are set to -inf: the views
  of a chest X-ray are only compared with chest X-rays.
- Each step the bank is cut into random partitions of `partition_size` entries (a permutation of the entries,
  `out_dim // partition_size` blocks); the softmaxes and the cross-entropy run inside each block.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

EMPTY = -1  # the label of an entry still holding the random start


def gather_all(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` of every process concatenated in rank order (itself without a process group); no gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class MemoryBank(nn.Module):
    """The queue (`dim`, `size`) of embeddings, their labels and the write pointer: buffers, so a checkpoint saves
    them and a resumed run continues with the same bank."""

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        # Drawn from its own generator: every process starts with the same bank, whatever else drew before.
        start = torch.randn(dim, size, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("queue", nn.functional.normalize(start, dim=0))
        self.register_buffer("labels", torch.full((size,), EMPTY, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[1]

    def scores(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (V*B, dim) x bank -> scores (V*B, size), valid (V*B, size) False where MerMED's modality
        gate masks the entry). `labels` (B,) are the images'; the V views of a batch come view-major."""
        # a copy: the enqueue below overwrites the bank in place before the backward pass needs it
        scores = embeddings @ self.queue.detach().clone().to(embeddings.dtype)
        if bool((self.labels == EMPTY).any()):  # the gate starts once the bank is full (MerMED's rule)
            return scores, torch.ones_like(scores, dtype=torch.bool)
        views = embeddings.shape[0] // labels.shape[0]
        valid = labels.repeat(views).unsqueeze(1) == self.labels.unsqueeze(0)
        return scores, valid

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the global batch's `embeddings` (B, dim) (this process's share; gathered here) at the pointer.

        MerMED asserts `size % global batch == 0`; here the write wraps around the end instead, which is the same
        whenever that holds and lets a last short batch through."""
        keys, keys_labels = gather_all(embeddings.detach().float()), gather_all(labels.long())
        keys, keys_labels = keys[-self.size:], keys_labels[-self.size:]
        at = (int(self.pointer) + torch.arange(keys.shape[0], device=self.queue.device)) % self.size
        self.queue[:, at] = keys.T.to(self.queue.dtype)
        self.labels[at] = keys_labels.to(self.labels.device)
        self.pointer.fill_((int(self.pointer) + keys.shape[0]) % self.size)


def random_partitions(size: int, partition_size: int, generator: torch.Generator) -> torch.Tensor:
    """(`size // partition_size`, `partition_size`) entry indices: a random permutation cut into blocks (MaSSL's
    `torch.multinomial` over equal weights without replacement is a permutation; the remainder is left out)."""
    blocks = size // partition_size
    return torch.randperm(size, generator=generator)[: blocks * partition_size].view(blocks, partition_size)


def partitioned_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
                              partitions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MaSSL/MerMED's loss and the teacher's mean entropy per block.

    `student` (C, B, size): the C crops' scores over the student temperature; `teacher` (2, B, size): the two global
    views' over the teacher temperature; `valid` (B, size) the modality gate. In each block the student's
    log-softmax is scored against the teacher's softmax; masked entries add nothing (MerMED sets them to -inf and
    zeroes their terms; here they are filled with a finite floor first, so a block masked whole adds 0 instead of
    NaN). The cross-entropy is summed over a block, averaged over blocks and images, and over every pair of
    student crop i and teacher view j with i != j (C x 2 - 2 pairs)."""
    index = partitions.to(student.device).flatten()
    blocks, width = partitions.shape
    keep = valid[:, index].view(1, -1, blocks, width)
    floor = torch.finfo(torch.float32).min / 4

    def gated(scores: torch.Tensor) -> torch.Tensor:
        picked = scores.float()[:, :, index].view(scores.shape[0], -1, blocks, width)
        return picked.masked_fill(~keep, floor)

    log_p = torch.log_softmax(gated(student), dim=-1)  # (C, B, P, W)
    with torch.no_grad():
        q = torch.softmax(gated(teacher), dim=-1) * keep  # (2, B, P, W)
        entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
    # ce[i, j] = mean over images and blocks of -sum_k q_j log p_i
    ce = -torch.einsum("jbpw,ibpw->ij", q, log_p) / (log_p.shape[1] * blocks)
    pairs = ~torch.eye(ce.shape[0], ce.shape[1], dtype=torch.bool, device=ce.device)
    return ce[pairs].mean(), entropy
