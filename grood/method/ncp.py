"""The nearest-class-prototype (NCP) model and GROOD's closed-form gradient (paper section 4.1).

Notation: ``h [N, D]`` penultimate features, ``P [C, D]`` class prototypes, ``p_ood [D]`` the OOD
prototype. Index ``C`` (0-based) of the ``C+1`` NCP outputs is the OOD class.
"""

from __future__ import annotations

import torch


def ncp_logits(h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``L(h) = -[||h - p_1||, ..., ||h - p_C||, ||h - p_ood||]``.

    Returns ``[N, C+1]``; the last column is the OOD logit. Class distances use ``torch.cdist`` (memory
    ``[N, C]``, not ``[N, C, D]``); the OOD distance is computed directly from ``h - p_ood``.
    """
    class_distances = torch.cdist(h, class_prototypes.to(h.dtype))
    ood_distance = torch.linalg.vector_norm(h - ood_prototype.to(h.dtype).view(1, -1), dim=1, keepdim=True)
    return -torch.cat([class_distances, ood_distance], dim=1)


def ncp_log_probabilities(
    h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor
) -> torch.Tensor:
    """Log of eq. 3, ``log p_i(h) = L_i - logsumexp(L)``: ``[N, C+1]``, stable for distances in the thousands."""
    return torch.log_softmax(ncp_logits(h, class_prototypes, ood_prototype), dim=1)


def ncp_probabilities(h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``p_i(h) = softmax(L(h))_i``, ``[N, C+1]``; ``p_ood(h)`` is the last column."""
    return ncp_log_probabilities(h, class_prototypes, ood_prototype).exp()


def ncp_loss(
    h: torch.Tensor, y: torch.Tensor | int, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor
) -> torch.Tensor:
    """Eq. 4: ``H(h, y) = -log p_y(h)`` for labels ``y`` in ``0..C`` (``C`` = OOD). Returns ``[N]``."""
    log_p = ncp_log_probabilities(h, class_prototypes, ood_prototype)
    y = torch.as_tensor(y, device=h.device).expand(h.shape[0]).long()
    return -log_p.gather(1, y.view(-1, 1)).squeeze(1)


def _unit(difference: torch.Tensor) -> torch.Tensor:
    """Row-wise ``v / ||v||``, and the zero vector where ``v = 0`` (never NaN)."""
    norm = torch.linalg.vector_norm(difference, dim=-1, keepdim=True)
    return torch.where(norm > 0, difference / norm.clamp_min(torch.finfo(difference.dtype).tiny), 0.0)


def grood_gradient(h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``∇H(h) = p_ood(h) · (h - p_ood) / ||h - p_ood||``, batched: ``[N, D]``.

    This is ``∇_{p_ood} H(h, y)`` for **any ID label** ``y`` in ``1..C`` (appendix A.6): only ``L_{C+1}``
    depends on ``p_ood`` and ``∂H(h, y)/∂L_{C+1} = p_ood(h)`` when ``y`` is an ID class. Eq. 5's
    "``H(h, C+1)``" must be read that way: for ``y = C+1`` itself the derivative is ``p_ood(h) - 1`` and
    the gradient is ``(p_ood(h) - 1) · (h - p_ood)/||h - p_ood||`` (``tests/test_method_ncp.py`` checks
    both against autograd). The norm of eq. 5 is ``p_ood(h)``. Where ``h = p_ood`` the gradient is the
    zero vector.
    """
    p_ood = ncp_probabilities(h, class_prototypes, ood_prototype)[:, -1:]
    return p_ood * _unit(h - ood_prototype.to(h.dtype).view(1, -1))


def ood_prototype_distance(h: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Table 4 ablation (1): ``||h - p_ood||``, ``[N]`` (larger = farther from the OOD reference)."""
    return torch.linalg.vector_norm(h - ood_prototype.to(h.dtype).view(1, -1), dim=1)


def gradient_l1_norm(gradient: torch.Tensor) -> torch.Tensor:
    """Table 4 ablation (2): the L1 norm of each gradient row, ``[N, D] -> [N]``."""
    return gradient.abs().sum(dim=1)


def class_prototype_gradient(
    h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor
) -> torch.Tensor:
    """Table 4 ablation (3): the gradient w.r.t. a class prototype instead of ``p_ood``. ``[N, D]``.

    For the NCP loss ``H(h, y)`` and ``i <= C``: ``∂H/∂p_i = (p_i(h) - [i = y]) (h - p_i)/||h - p_i||``.
    We take ``y = ŷ``, the NCP-predicted class (nearest class prototype), and differentiate w.r.t. its
    prototype ``p_ŷ``: ``(p_ŷ(h) - 1) (h - p_ŷ)/||h - p_ŷ||``. This keeps the gradient ``[N, D]``
    (stacking all ``C`` prototypes would be ``[N, C·D]``: 2M dimensions on ImageNet) and, like eq. 5,
    needs no true label at test time.
    """
    probabilities = ncp_probabilities(h, class_prototypes, ood_prototype)[:, :-1]
    predicted = probabilities.argmax(dim=1)
    prototype = class_prototypes.to(h.dtype)[predicted]
    p_predicted = probabilities.gather(1, predicted.view(-1, 1))
    return (p_predicted - 1.0) * _unit(h - prototype)
