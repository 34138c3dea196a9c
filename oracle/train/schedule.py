"""The learning-rate schedule: linear warmup from 0 to the peak, then cosine decay to the minimum.

A pure function of the step, so a resumed run needs no scheduler state to continue on the same curve.
"""

from __future__ import annotations

import math


def learning_rate(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The rate for optimizer step `step` (0-based): lr·(step+1)/warmup during warmup, then cosine to min_lr at
    total_steps, and min_lr after it."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
