"""Adversarial set for check_lr_schedule (notebook 06): other correct styles and usual mistakes."""

import math

import numpy as np
import torch

CHECK = "lr_schedule"


# ------------------------------------------------------------------------------------------------- correct
def correct_branches(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def correct_clamped_numpy(step, total_steps, warmup_steps, base_lr):
    warm = (step + 1) / max(warmup_steps, 1)
    t = np.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = 0.5 * (1 + np.cos(np.pi * t))
    return float(base_lr * (warm if step < warmup_steps else cosine))


def correct_cos_squared(step, total_steps, warmup_steps, base_lr):
    # (1 + cos(pi t)) / 2 = cos(pi t / 2)^2
    if step < warmup_steps:
        return base_lr * ((step + 1) / warmup_steps)
    t = min(step - warmup_steps, total_steps - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * math.cos(math.pi * t / 2) ** 2


def correct_torch_item(step, total_steps, warmup_steps, base_lr):
    s = torch.tensor(float(step), dtype=torch.float64)
    if step < warmup_steps:
        return (base_lr * (s + 1) / warmup_steps).item()
    t = torch.clamp((s - warmup_steps) / (total_steps - warmup_steps), max=1.0)
    return (base_lr * 0.5 * (1 + torch.cos(math.pi * t))).item()


def correct_numpy_float(step, total_steps, warmup_steps, base_lr):
    # returns a numpy float64 (a float subclass)
    if step < warmup_steps:
        return np.float64(base_lr) * (step + 1) / warmup_steps
    t = np.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    return np.float64(base_lr) * 0.5 * (1 + np.cos(np.pi * t))


CORRECT = [correct_branches, correct_clamped_numpy, correct_cos_squared, correct_torch_item, correct_numpy_float]


# ------------------------------------------------------------------------------------------------ mistakes
def warmup_from_zero(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * step / warmup_steps  # the first step gets lr 0
    return correct_branches(step, total_steps, warmup_steps, base_lr)


def cosine_over_total(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(step / total_steps, 1.0)
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def no_clamp(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def no_half(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * math.cos(math.pi * t)


def linear_decay(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * (1 - t)


def factor_only(step, total_steps, warmup_steps, base_lr):
    return correct_branches(step, total_steps, warmup_steps, 1.0)


def no_pi(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * base_lr * (1 + math.cos(t))


def package_argument_order(step, warmup_steps, total_steps, base_lr):
    return correct_branches(step, total_steps, warmup_steps, base_lr)


def returns_tensor(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return torch.tensor(base_lr * (step + 1) / warmup_steps)
    t = torch.tensor(min(1.0, (step - warmup_steps) / (total_steps - warmup_steps)))
    return 0.5 * base_lr * (1 + torch.cos(math.pi * t))


def divides_by_zero_without_warmup(step, total_steps, warmup_steps, base_lr):
    warm = min(1.0, (step + 1) / warmup_steps)  # ZeroDivisionError when warmup_steps = 0
    if step < warmup_steps:
        return base_lr * warm
    return correct_branches(step, total_steps, warmup_steps, base_lr)


def no_warmup(step, total_steps, warmup_steps, base_lr):
    t = min(1.0, step / total_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def decays_to_floor(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def decay_one_step_ahead(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step + 1 - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def _decay(step, total_steps, warmup_steps, base_lr, f):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * f(t)


def sin_instead_of_cos(step, total_steps, warmup_steps, base_lr):
    return _decay(step, total_steps, warmup_steps, base_lr, lambda t: 0.5 * (1 + math.sin(math.pi * t)))


def cos_in_degrees(step, total_steps, warmup_steps, base_lr):
    return _decay(step, total_steps, warmup_steps, base_lr, lambda t: 0.5 * (1 + math.cos(180 * t)))


def no_decay(step, total_steps, warmup_steps, base_lr):
    return _decay(step, total_steps, warmup_steps, base_lr, lambda t: 1.0)


def forgets_the_half(step, total_steps, warmup_steps, base_lr):
    return _decay(step, total_steps, warmup_steps, base_lr, lambda t: 1 + math.cos(math.pi * t))


def returns_numpy_float32(step, total_steps, warmup_steps, base_lr):
    return np.float32(correct_branches(step, total_steps, warmup_steps, base_lr))  # no Python float


def returns_numpy_array(step, total_steps, warmup_steps, base_lr):
    return np.array(correct_branches(step, total_steps, warmup_steps, base_lr))  # a 0-d array


def int_zero_after_the_end(step, total_steps, warmup_steps, base_lr):
    if step >= total_steps:
        return 0  # an int, not the contract's float
    return correct_branches(step, total_steps, warmup_steps, base_lr)


def reaches_zero_one_step_early(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps - 1))  # "the last step should get 0"
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


MISTAKES = [
    (reaches_zero_one_step_early, "warmup_steps - 1"),
    (returns_numpy_float32, "Python float"),
    (returns_numpy_array, "Python float"),
    (int_zero_after_the_end, "Python float, got the int"),
    (forgets_the_half, "1/2 is missing"),
    (sin_instead_of_cos, "sin instead of cos"),
    (cos_in_degrees, "radians"),
    (no_decay, "no decay"),
    (decay_one_step_ahead, "one step ahead"),
    (warmup_from_zero, "step + 1"),
    (cosine_over_total, "warmup_steps"),
    (no_clamp, "total_steps"),
    (no_half, "1 + cos"),
    (linear_decay, "cosine"),
    (factor_only, "base_lr"),
    (no_pi, "pi"),
    (package_argument_order, "order"),
    (returns_tensor, "float"),
    (divides_by_zero_without_warmup, "no warm-up"),
    (no_warmup, "warm-up"),
    (decays_to_floor, "decay to 0"),
]


# off by one at the end of the warm-up
def warmup_divides_by_one_more(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)  # never quite reaches base_lr
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def warmup_through_its_end(step, total_steps, warmup_steps, base_lr):
    if warmup_steps and step <= warmup_steps:  # step warmup_steps gets (warmup_steps + 1) / warmup_steps of base_lr
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def correct_through_a_float64_tensor(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return float(torch.tensor(base_lr * (step + 1) / warmup_steps, dtype=torch.float64))
    t = torch.tensor(min(1.0, (step - warmup_steps) / (total_steps - warmup_steps)), dtype=torch.float64)
    return (0.5 * base_lr * (1 + torch.cos(math.pi * t))).item()


CORRECT.append(correct_through_a_float64_tensor)
MISTAKES += [(warmup_divides_by_one_more, "warmup_steps + 1"), (warmup_through_its_end, "step <= warmup_steps")]


def cosine_in_float32(step, total_steps, warmup_steps, base_lr):
    # torch.cos of a float32 tensor: near the end 1 + cos keeps only float32's digits; notebook 06 compares the
    # schedule with vit_edu's to 1e-12
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    s = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * 0.5 * (1 + torch.cos(torch.tensor(math.pi * s))).item()


MISTAKES.append((cosine_in_float32, "float32 precision"))
