"""The memory bank, its random partitions and the partitioned cross-entropy against a plain re-creation of the
published criterion (yangzhou12/MerMED `criterion.py`: -inf for gated entries, their terms zeroed, every student
crop i against every teacher view j != i)."""
from __future__ import annotations

import torch

from multimeditron.adaptation.memory_bank import (
    EMPTY,
    MemoryBank,
    partitioned_cross_entropy,
    random_partitions,
)


def published_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
                   partitions: torch.Tensor) -> torch.Tensor:
    """The published loop: scores gated to -inf, cut into blocks, my_cross_entropy per (i, j) pair."""
    def blocks(scores: torch.Tensor) -> torch.Tensor:  # (B, size) -> (P, B, W)
        gated = scores.masked_fill(~valid, -float("inf"))
        return torch.stack(gated[:, partitions.flatten()].split(partitions.shape[1], dim=1))

    total, count = 0.0, 0
    for i in range(student.shape[0]):
        for j in range(teacher.shape[0]):
            if i == j:
                continue
            p, q = blocks(student[i]), blocks(teacher[j])
            invalid = torch.isinf(p) | torch.isinf(q)
            terms = -torch.softmax(q, -1) * torch.log_softmax(p, -1)
            total = total + torch.where(invalid, torch.zeros_like(terms), terms).sum(-1).mean()
            count += 1
    return total / count


def test_loss_equals_the_published_criterion_with_and_without_the_modality_gate() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3, 32) * 3, torch.randn(2, 3, 32) * 3
    partitions = random_partitions(32, 8, torch.Generator().manual_seed(1))
    everything = torch.ones(3, 32, dtype=torch.bool)
    gated = torch.rand(3, 32) > 0.3
    for valid in (everything, gated):
        ours, entropy = partitioned_cross_entropy(student, teacher, valid, partitions)
        assert torch.allclose(ours, published_loss(student, teacher, valid, partitions), atol=1e-5)
        assert 0 < entropy < torch.log(torch.tensor(8.0))


def test_a_block_masked_whole_adds_nothing_and_no_nan() -> None:
    """The published code gives NaN gradients there; here the block's terms are 0 and the gradient finite."""
    student = torch.randn(3, 2, 8, requires_grad=True)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[0, :4] = False  # image 0 has no entry of its modality in the first block
    partitions = torch.arange(8).view(2, 4)
    loss, _ = partitioned_cross_entropy(student, torch.randn(2, 2, 8), valid, partitions)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert torch.all(student.grad[:, 0, :4] == 0)


def test_partitions_are_a_permutation_cut_into_blocks() -> None:
    blocks = random_partitions(10, 3, torch.Generator().manual_seed(0))
    assert blocks.shape == (3, 3) and len(set(blocks.flatten().tolist())) == 9
    again = random_partitions(10, 3, torch.Generator().manual_seed(0))
    assert torch.equal(blocks, again)


def test_bank_enqueues_as_a_ring_and_gates_by_modality_once_full() -> None:
    bank = MemoryBank(size=6, dim=4, seed=0)
    assert torch.allclose(bank.queue.norm(dim=0), torch.ones(6))
    assert torch.equal(MemoryBank(6, 4, seed=0).queue, bank.queue)  # the same start on every process
    keys = torch.nn.functional.normalize(torch.randn(4, 4), dim=1)
    bank.enqueue(keys, torch.tensor([0, 1, 0, 1]))
    assert int(bank.pointer) == 4 and bank.labels.tolist() == [0, 1, 0, 1, EMPTY, EMPTY]
    assert torch.allclose(bank.queue[:, :4], keys.T)
    _, valid = bank.scores(keys[:2], torch.tensor([0, 1]))
    assert valid.all()  # not full yet: no gate (MerMED's rule)
    bank.enqueue(keys, torch.tensor([1, 1, 0, 0]))  # wraps around: entries 4, 5, 0, 1
    assert int(bank.pointer) == 2 and bank.labels.tolist() == [0, 0, 0, 1, 1, 1]
    scores, valid = bank.scores(torch.cat([keys[:2], keys[:2]]), torch.tensor([0, 1]))  # 2 views of 2 images
    assert scores.shape == (4, 6)
    assert valid.tolist() == [[True, True, True, False, False, False], [False, False, False, True, True, True]] * 2
