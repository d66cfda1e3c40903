from __future__ import annotations

import itertools

import torch

from workers.seq2seq import Seq2Seq, synthetic_batch, train_steps


def test_the_seed_model_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = Seq2Seq()
    source, target = synthetic_batch(batch=32, seq=100)
    losses = train_steps(model, source, target, steps=5)
    assert losses[-1] < losses[0]
    assert all(b < a for a, b in itertools.pairwise(losses))
    logits = model(source[:2], target[:2])
    assert logits.shape == (2, 100, 10_000)
