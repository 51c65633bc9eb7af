"""The nearest-class-prototype (NCP) model and GROOD's closed-form gradient (paper section 4.1).

Notation: ``h [N, D]`` penultimate features, ``class_prototypes [C, D]`` (``p_1..p_C``),
``ood_prototype [D]`` (``p_ood``). The paper numbers the NCP outputs ``1..C+1``; here they are
``0..C``, and column / label ``C`` (the last) is the OOD class.

Everything is batched and computed in the dtype of ``h``; the prototypes are cast to it.
"""

from __future__ import annotations

import torch


def _as_rows(h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor | None = None):
    """Check shapes and bring the prototypes to ``h``'s device and dtype."""
    if h.dim() != 2:
        raise ValueError(f"h must be [N, D]; got shape {tuple(h.shape)}")
    if class_prototypes.dim() != 2 or class_prototypes.shape[1] != h.shape[1]:
        raise ValueError(
            f"class_prototypes must be [C, {h.shape[1]}] (C classes, D of h); got shape {tuple(class_prototypes.shape)}"
        )
    protos = class_prototypes.to(device=h.device, dtype=h.dtype)
    if ood_prototype is None:
        return protos, None
    if ood_prototype.shape != (h.shape[1],):
        raise ValueError(f"ood_prototype must be [{h.shape[1]}]; got shape {tuple(ood_prototype.shape)}")
    return protos, ood_prototype.to(device=h.device, dtype=h.dtype)


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Row-wise ``v / ||v||_2``; a zero row gives the zero vector (never NaN)."""
    norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v / torch.where(norm > 0, norm, torch.ones_like(norm))


def class_distances(h: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """``||h - p_i||_2`` for every class: ``[N, D]``, ``[C, D]`` -> ``[N, C]`` (not squared).

    Computed as ``sqrt(max(0, |h|^2 + |p|^2 - 2 h.p))``, one matrix product (as ``torch.cdist`` does for
    large inputs, without its padded copies of ``h``): memory ``[N, C]`` rather than ``[N, C, D]``.
    """
    protos, _ = _as_rows(h, class_prototypes)
    squared = torch.addmm(torch.linalg.vector_norm(protos, dim=1).square(), h, protos.T, alpha=-2.0)
    squared = squared + torch.linalg.vector_norm(h, dim=1, keepdim=True).square()
    return squared.clamp(min=0.0).sqrt()


def ncp_predict(h: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """``[N]`` index of the nearest class prototype (the NCP classifier; the paper's "NCP Acc.")."""
    return class_distances(h, class_prototypes).argmin(dim=1)


def ncp_logits(h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``L(h) = -[||h - p_1||, ..., ||h - p_C||, ||h - p_ood||]`` -> ``[N, C+1]``.

    The last column is the OOD logit ``L_{C+1}``. The OOD distance is computed exactly from ``h - p_ood``.
    """
    protos, p_ood = _as_rows(h, class_prototypes, ood_prototype)
    ood_distance = torch.linalg.vector_norm(h - p_ood, dim=1, keepdim=True)
    return -torch.cat([class_distances(h, protos), ood_distance], dim=1)


def ncp_log_probabilities(
    h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor
) -> torch.Tensor:
    """Log of eq. 3: ``log p_i(h) = L_i(h) - logsumexp_j L_j(h)`` -> ``[N, C+1]``.

    ``log_softmax`` subtracts the largest logit first (log-sum-exp), so distances in the thousands give
    finite values (plain ``exp`` would underflow to 0/0 = NaN).
    """
    return torch.log_softmax(ncp_logits(h, class_prototypes, ood_prototype), dim=1)


def ncp_probabilities(h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``p_i(h) = exp(L_i) / sum_j exp(L_j)`` -> ``[N, C+1]``; the last column is ``p_ood(h)``."""
    return ncp_log_probabilities(h, class_prototypes, ood_prototype).exp()


def ncp_loss(
    h: torch.Tensor,
    y: torch.Tensor | int,
    class_prototypes: torch.Tensor,
    ood_prototype: torch.Tensor,
) -> torch.Tensor:
    """Eq. 4: ``H(h, y) = -log p_y(h)`` -> ``[N]`` (no reduction).

    ``y``: an int or ``[N]`` integer labels in ``0..C``; ``C`` is the OOD class (the paper's ``C+1``).
    Differentiable w.r.t. ``h`` and both prototypes (the tests check eq. 5 against its autograd).
    """
    log_p = ncp_log_probabilities(h, class_prototypes, ood_prototype)
    num_outputs = log_p.shape[1]
    labels = torch.as_tensor(y, device=h.device)
    if labels.is_floating_point():
        raise ValueError(f"y must hold integer labels; got dtype {labels.dtype}")
    labels = labels.long().expand(h.shape[0])
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_outputs):
        bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= num_outputs)].tolist()})[:5]
        raise ValueError(f"y holds value(s) {bad} outside 0..{num_outputs - 1} (C={num_outputs - 1} is the OOD class)")
    return -log_p.gather(1, labels.view(-1, 1)).squeeze(1)


#: Rows of ``h`` per block in the fused eq. 3 / eq. 5 kernels: a ``[block, C]`` distance block stays in
#: the CPU's cache for C up to a few thousand, and no temporary grows with the batch (large temporaries
#: cost page faults on every batch).
ROW_BLOCK = 1024


def _ood_log_probability_block(
    h: torch.Tensor, protos: torch.Tensor, squared_proto_norms: torch.Tensor, ood_distance: torch.Tensor
) -> torch.Tensor:
    """Eq. 3, last column, in log: ``[B]`` log p_ood for one row block (all in place on one ``[B, C]``)."""
    distances = torch.addmm(squared_proto_norms, h, protos.T, alpha=-2.0)  # |p|^2 - 2 h.p
    distances.add_(torch.linalg.vector_norm(h, dim=1, keepdim=True).square_()).clamp_(min=0.0).sqrt_()
    nearest = distances.amin(dim=1, keepdim=True)
    # log sum_i exp(-d_i) = -d_min + log sum_i exp(d_min - d_i): every term <= 1, the largest exactly 1
    class_log_sum = torch.sub(nearest, distances, out=distances).exp_().sum(dim=1).log_().sub_(nearest.squeeze(1))
    log_normaliser = torch.logaddexp(class_log_sum, -ood_distance)  # the OOD logit L_{C+1} = -d_ood joins the sum
    return -ood_distance - log_normaliser


def ood_log_probability(
    h: torch.Tensor, class_prototypes: torch.Tensor, ood_prototype: torch.Tensor
) -> torch.Tensor:
    """Eq. 3, last column, in log: ``log p_ood(h) = L_{C+1}(h) - logsumexp_j L_j(h)`` -> ``[N]`` (<= 0).

    Equals ``ncp_log_probabilities(h, ...)[:, -1]`` without the ``[N, C+1]`` logits: rows are processed
    :data:`ROW_BLOCK` at a time, each block's class distances computed (as in :func:`class_distances`)
    and reduced by log-sum-exp in place. Distances in the thousands are fine (the sum is shifted by the
    nearest class distance). The OOD distance is computed exactly from ``h - p_ood``.
    """
    protos, p_ood = _as_rows(h, class_prototypes, ood_prototype)
    squared_proto_norms = torch.linalg.vector_norm(protos, dim=1).square_()
    out = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
    for start in range(0, h.shape[0], ROW_BLOCK):
        block = h[start : start + ROW_BLOCK]
        ood_distance = torch.linalg.vector_norm(block - p_ood, dim=1)
        out[start : start + ROW_BLOCK] = _ood_log_probability_block(block, protos, squared_proto_norms, ood_distance)
    return out


def grood_gradient(
    h: torch.Tensor,
    class_prototypes: torch.Tensor,
    ood_prototype: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 5: ``∇H(h) = p_ood(h) · (h - p_ood) / ||h - p_ood||_2`` -> ``[N, D]`` (closed form, batched).

    This is ``∇_{p_ood} H(h, y)`` for **any ID label** ``y`` (paper ``1..C``, here ``0..C-1``; appendix
    A.6). Only ``L_{C+1} = -||h - p_ood||`` depends on ``p_ood``, ``∇_{p_ood} L_{C+1} = (h - p_ood)/||h - p_ood||``
    and ``∂H(h, y)/∂L_{C+1} = p_ood(h) - [y = C+1]``. So eq. 5's "``H(h, C+1)``" (and A.6's
    "``∂/∂L_{C+1} H(L, C+1) = p_{C+1}``") must be read as ``H(h, y)`` for an ID label ``y``: for the OOD
    label ``y = C+1`` itself the gradient is ``(p_ood(h) - 1) · (h - p_ood)/||h - p_ood||``.
    ``tests/test_method_ncp.py`` checks both cases against autograd of :func:`ncp_loss` in float64.

    Properties: ``||∇H(h)||_2 = p_ood(h)``; where ``h = p_ood`` exactly the gradient is the zero vector
    (the unit vector is undefined there; autograd of ``||h - p||`` also gives 0), never NaN.

    ``p_ood(h)`` is eq. 3's last column (:func:`ood_log_probability`). Rows are processed
    :data:`ROW_BLOCK` at a time, each written straight into ``out`` (``[N, D]``, ``h``'s dtype and
    device; a new tensor when None), so no temporary grows with ``N``.
    """
    protos, p_ood = _as_rows(h, class_prototypes, ood_prototype)
    if out is None:
        out = torch.empty_like(h, memory_format=torch.contiguous_format)
    elif out.shape != h.shape or out.dtype != h.dtype or out.device != h.device:
        raise ValueError(
            f"out must be a {h.dtype} tensor of shape {tuple(h.shape)} on {h.device}; got {out.dtype} "
            f"{tuple(out.shape)} on {out.device}"
        )
    squared_proto_norms = torch.linalg.vector_norm(protos, dim=1).square_()
    for start in range(0, h.shape[0], ROW_BLOCK):
        block = h[start : start + ROW_BLOCK]
        difference = torch.sub(block, p_ood, out=out[start : start + ROW_BLOCK])  # h - p_ood, in place
        ood_distance = torch.linalg.vector_norm(difference, dim=1)  # [B] = -L_{C+1}
        p_ood_of_h = _ood_log_probability_block(block, protos, squared_proto_norms, ood_distance).exp_()
        scale = p_ood_of_h / torch.where(ood_distance > 0, ood_distance, torch.ones_like(ood_distance))
        difference.mul_(scale.unsqueeze(1))
    return out


# --------------------------------------------------------------------------------------------------
# Ablation variants of the paper's Table 4
# --------------------------------------------------------------------------------------------------


def ood_prototype_distance(h: torch.Tensor, ood_prototype: torch.Tensor) -> torch.Tensor:
    """Table 4 (1) "Distance to the noise prototype": ``||h - p_ood||_2`` -> ``[N]``.

    Larger = farther from the OOD reference point.
    """
    if h.dim() != 2 or ood_prototype.shape != (h.shape[1],):
        raise ValueError(f"need h [N, D] and ood_prototype [D]; got {tuple(h.shape)} and {tuple(ood_prototype.shape)}")
    return torch.linalg.vector_norm(h - ood_prototype.to(device=h.device, dtype=h.dtype), dim=1)


def gradient_l1_norm(gradient: torch.Tensor) -> torch.Tensor:
    """Table 4 (2) "Gradient L1-norm only": ``sum_d |∇H(h)_d|`` -> ``[N]`` (as GradNorm scores)."""
    if gradient.dim() != 2:
        raise ValueError(f"gradient must be [N, D]; got shape {tuple(gradient.shape)}")
    return gradient.abs().sum(dim=1)


def class_prototype_gradient(
    h: torch.Tensor,
    class_prototypes: torch.Tensor,
    ood_prototype: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Table 4 (3) "Grads. wrt class prototypes": ``∇_{p_y} H(h, y)`` -> ``[N, D]``.

    For the NCP loss (eq. 4) and a class ``i <= C``: ``∂H(h, y)/∂p_i = (p_i(h) - [i = y]) (h - p_i)/||h - p_i||``.
    Stacking all ``C`` class gradients would give ``[N, C·D]`` (2M dimensions on ImageNet), so each row
    takes one prototype: ``y = labels[n]`` and the gradient w.r.t. ``p_y`` itself,

        ``∇_{p_y} H(h, y) = (p_y(h) - 1) · (h - p_y) / ||h - p_y||``.

    ``labels``: ``[N]`` classes in ``0..C-1`` to use as ``y``. The paper author's OpenOOD port
    (``GrOODPostprocessor``, flag ``use_pseudo_prototype``) takes ``y`` = the **network's** predicted class
    (``logits.argmax``) with cross-entropy on the NCP logits and keeps the gradient of that class's
    prototype: pass ``labels=logits.argmax(1)`` to reproduce it. When ``labels`` is None, ``y`` is the
    **NCP**-predicted class (nearest class prototype), which needs no network output and agrees with
    the network's prediction for most ID samples.
    """
    protos, p_ood = _as_rows(h, class_prototypes, ood_prototype)
    logits = ncp_logits(h, protos, p_ood)
    if labels is None:
        y = logits[:, :-1].argmax(dim=1)
    else:
        if labels.shape != (h.shape[0],):
            raise ValueError(f"labels must be [{h.shape[0]}]; got shape {tuple(labels.shape)}")
        y = labels.to(device=h.device, dtype=torch.long)
        num_classes = protos.shape[0]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            bad = sorted({int(v) for v in y[(y < 0) | (y >= num_classes)].tolist()})[:5]
            raise ValueError(f"labels hold value(s) {bad} outside the class range 0..{num_classes - 1}")
    p_y = torch.softmax(logits, dim=1).gather(1, y.view(-1, 1))
    return (p_y - 1.0) * _unit_rows(h - protos[y])
