"""Direct Preference Optimization (Rafailov et al. 2023, eq. 7) with a LoRA policy:

    loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

where log pi(y|x) sums the response tokens' log-probabilities. The reference is the same
weights with the adapters switched off (``adapters_disabled``), so one copy of the model serves
both; at the start the adapters add nothing (LoRA's B is zero), policy = reference and the loss
is exactly ln 2. The numbers logged carry TRL's names: ``rewards/chosen`` (beta times the
chosen log-ratio), ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.lm.config import IGNORE


def sequence_logps(model: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) the summed log-probability of each row's labelled tokens (labels: ``ids`` where a
    token counts, IGNORE elsewhere; position t predicts t + 1). Only the labelled positions go
    through the head, so a long prompt costs no (T, vocab) logits."""
    x = model.hidden(ids[:, :-1])  # (B, T-1, C)
    targets = labels[:, 1:]
    keep = targets != IGNORE  # (B, T-1)
    rows = x[keep]  # (N, C)
    logits = F.linear(rows.to(model.lm_head.weight.dtype), model.lm_head.weight).float()  # (N, vocab)
    token = logits.gather(1, targets[keep][:, None]).squeeze(1) - torch.logsumexp(logits, -1)  # (N,)
    row = torch.arange(ids.size(0), device=ids.device)[:, None].expand_as(keep)[keep]
    return torch.zeros(ids.size(0), device=ids.device, dtype=token.dtype).index_add(0, row, token)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean DPO loss and the implicit rewards beta * log(pi / ref) of each side, (B,)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen, rejected


class DPOObjective(nn.Module):
    """The loop's model for ``rlhf dpo``: (2B, T) ids and labels, chosen rows first."""

    def __init__(self, policy: nn.Module, beta: float):
        super().__init__()
        self.policy, self.beta = policy, beta

    def forward(
        self, ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        from nlpkit.lm.lora import adapters_disabled

        B = ids.size(0) // 2
        logps = sequence_logps(self.policy, ids, labels)
        with torch.no_grad(), adapters_disabled(self.policy):
            ref = sequence_logps(self.policy, ids, labels)
        loss, chosen, rejected = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], self.beta)
        numbers = {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": logps[:B].mean(),
            "logps/rejected": logps[B:].mean(),
        }
        return numbers, loss
