"""The seed's whole-model job: a small sequence-to-sequence model with attention.

Embedding 10,000 × 256, an LSTM encoder and decoder of 128 units, dot-product
attention of the decoder states over the encoder outputs, and a dense softmax
over the vocabulary; batch 32, sequence 100 by default. ``kind=model`` jobs
run training steps of it, so whole-model work is scheduled beside bare
attention. Sizes match ``scheduler.costmodel.seq2seq_step_flops``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scheduler.costmodel import SEQ2SEQ_EMBED, SEQ2SEQ_VOCAB
from workers.kernels import attention


class Seq2Seq(nn.Module):
    def __init__(self, vocab: int = SEQ2SEQ_VOCAB, embed: int = SEQ2SEQ_EMBED,
                 units: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.encoder = nn.LSTM(embed, units, batch_first=True)
        self.decoder = nn.LSTM(embed, units, batch_first=True)
        self.combine = nn.Linear(2 * units, units)
        self.out = nn.Linear(units, vocab)

    def forward(self, source: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        enc, state = self.encoder(self.embed(source))
        dec, _ = self.decoder(self.embed(target_in), state)
        # Dot-product attention of decoder states over encoder outputs, one head.
        context, _ = attention(dec.unsqueeze(1), enc.unsqueeze(1), enc.unsqueeze(1),
                               causal=False)
        mixed = torch.tanh(self.combine(torch.cat([dec, context.squeeze(1)], dim=-1)))
        logits: torch.Tensor = self.out(mixed)  # over the vocabulary
        return logits


def synthetic_batch(batch: int = 32, seq: int = 100, vocab: int = SEQ2SEQ_VOCAB,
                    seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed copy task: the target is the source sequence."""
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(1, vocab, (batch, seq), generator=g).to(device)
    return source, source.clone()


def train_steps(model: Seq2Seq, source: torch.Tensor, target: torch.Tensor, steps: int,
                lr: float = 3e-3) -> list[float]:
    """Run ``steps`` Adam steps (teacher forcing); returns the loss before each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    target_in = F.pad(target[:, :-1], (1, 0))  # shifted right, 0 = start token
    losses = []
    for _ in range(steps):
        logits = model(source, target_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    return losses
