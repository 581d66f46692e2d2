"""KL estimators: hand-computed values, clamping, straight-through k3+."""
from __future__ import annotations

import math

import pytest
import torch

from agentrl.algos import KL, kl_penalty


def t(x, grad=False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def test_hand_computed():
    # δ = logp − ref = 0.4: k1 = 0.4, k2 = 0.08, k3 = e^−0.4 + 0.4 − 1 = 0.070320; abs = 0.4
    logp, ref = t([[-0.7]]), t([[-1.1]])
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(0.4)
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.08)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(math.exp(-0.4) + 0.4 - 1)
    assert float(kl_penalty(logp, ref, "abs")) == pytest.approx(0.4)
    assert float(kl_penalty(logp, ref)) == pytest.approx(0.070320, abs=1e-6)  # default kind k3


def test_k3_is_clamped_and_nonnegative():
    # δ = −50: x = clamp(50, −20, 20) = 20, e^20 − 21 → clamped to 10; δ = 50: x = −20 → e^−20 + 19 → 10
    got = kl_penalty(t([[-50.0, 50.0, 0.0]]), t([[0.0, 0.0, 0.0]]), "k3")
    torch.testing.assert_close(got, t([[10.0, 10.0, 0.0]]))
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)[None, :]
    assert (kl_penalty(x, torch.zeros_like(x), "k3") >= 0).all()


def test_k3_plus_value_of_k3_gradient_of_k2():
    logp = t([[-0.7, -1.6]], grad=True)
    ref = t([[-1.1, -1.0]])
    value = KL.get("k3+")(logp, ref)
    torch.testing.assert_close(value.detach(), KL.get("k3")(logp, ref).detach())
    value.sum().backward()
    torch.testing.assert_close(logp.grad, t([[0.4, -0.6]]))  # ∂(½δ²)/∂logp = δ


def test_registry_names_and_unknown_kind():
    assert {"k1", "k2", "k3"} <= set(KL.names())
    with pytest.raises(KeyError, match="unknown kl"):
        kl_penalty(t([[0.0]]), t([[0.0]]), "k4")
