"""The distillation losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import distillation_loss, kl_divergence, l2_distance


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def test_kl_per_head_per_step_averaged_by_hand():
    # head "objects": batch 1, 2 steps, 3 classes; head "scenes": 2 steps, 2 classes
    p_obj = [[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]]  # a zero: 0 log 0 = 0
    q_obj = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]
    p_sc = [[1.0, 0.0], [0.4, 0.6]]
    q_sc = [[0.9, 0.1], [0.5, 0.5]]
    log_probs = {
        "objects": torch.tensor([q_obj]).log(),
        "scenes": torch.tensor([q_sc]).log(),
    }
    targets = {"objects": torch.tensor([p_obj]), "scenes": torch.tensor([p_sc])}
    loss, per_head = distillation_loss(log_probs, targets, "kl")

    # objects: step 1 = .7 ln(.7/.5) + .2 ln(.2/.25) + .1 ln(.1/.25); step 2 = .5 ln(.5/.3)
    obj = (
        (0.7 * math.log(1.4) + 0.2 * math.log(0.8) + 0.1 * math.log(0.4))
        + (0.5 * math.log(0.5 / 0.3))
    ) / 2
    scenes = (math.log(1 / 0.9) + (0.4 * math.log(0.8) + 0.6 * math.log(1.2))) / 2
    assert obj == pytest.approx(
        (hand_kl(p_obj[0], q_obj[0]) + hand_kl(p_obj[1], q_obj[1])) / 2, rel=1e-12
    )
    assert per_head["objects"].item() == pytest.approx(obj, rel=1e-5)
    assert per_head["scenes"].item() == pytest.approx(scenes, rel=1e-5)
    assert loss.item() == pytest.approx((obj + scenes) / 2, rel=1e-5)


def test_kl_is_zero_when_student_equals_teacher_and_positive_otherwise():
    p = torch.softmax(torch.randn(4, 3, 10), -1)
    assert kl_divergence(p.log(), p).abs().max() < 1e-6
    q = torch.softmax(torch.randn(4, 3, 10), -1)
    assert (kl_divergence(q.log(), p) > 0).all()


def test_kl_gradient_is_q_minus_p_on_the_logits():
    # d KL(p || softmax(z)) / dz = softmax(z) - p: what makes KL the right distillation loss
    z = torch.randn(1, 1, 5, requires_grad=True)
    p = torch.softmax(torch.randn(1, 1, 5), -1)
    loss, _ = distillation_loss({"h": torch.log_softmax(z, -1)}, {"h": p})
    loss.backward()
    assert torch.allclose(z.grad, torch.softmax(z, -1).detach() - p, atol=1e-6)


def test_l2_on_probabilities_by_hand():
    p = [[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]]
    q = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]
    loss, per_head = distillation_loss(
        {"objects": torch.tensor([q]).log()}, {"objects": torch.tensor([p])}, "l2"
    )
    step1 = 0.2**2 + 0.05**2 + 0.15**2
    step2 = 0.2**2 + 0.2**2 + 0.0
    assert loss.item() == pytest.approx((step1 + step2) / 2, rel=1e-5)
    assert l2_distance(torch.tensor(q).log(), torch.tensor(p)).tolist() == pytest.approx(
        [step1, step2], rel=1e-5
    )


def test_mismatched_steps_and_heads_are_clear_errors():
    q = torch.log_softmax(torch.randn(2, 4, 3), -1)
    with pytest.raises(ValueError, match="student output"):
        distillation_loss({"h": q}, {"h": torch.full((2, 3, 3), 1 / 3)})
    with pytest.raises(ValueError, match="heads"):
        distillation_loss({"h": q}, {"g": torch.full((2, 4, 3), 1 / 3)})
    with pytest.raises(ValueError, match="unknown loss"):
        distillation_loss({"h": q}, {"h": q.exp()}, "l1")
