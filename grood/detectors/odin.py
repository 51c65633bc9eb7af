"""ODIN (Liang, Li & Srikant, ICLR 2018): temperature scaling plus input perturbation; needs the network.

Matched: OpenOOD ``odin_postprocessor.py`` (``odin.yml``: temperature 1000, noise 0.0014) and the ODIN
paper (eqs. 1-2). For a batch of normalised images ``x`` and the network's logits ``f(x)``:

1. ``y_hat = argmax f(x)``; loss ``L = CE(f(x) / T, y_hat)``;
2. ``g = +1`` where ``dL/dx >= 0`` else ``-1`` (OpenOOD's ``(ge(grad, 0) - 0.5) * 2``: a zero gradient
   counts as +1), divided per channel by the input normalisation's std (``input_std``), so that the
   step ``noise`` is in units of the un-normalised image;
3. ``x' = x - noise * g``; score ``max_c softmax(f(x') / T)_c`` (higher = more ID).

OpenOOD averages the loss over the batch; here it is summed, which scales every gradient by the
batch size and leaves its sign, hence ``x'``, unchanged (and makes the result independent of the batch
size). With ``noise = 0`` the score is MSP at temperature ``T`` (tested). Not pytorch-ood's ``ODIN``:
its ``torch.sign`` maps a zero gradient to 0 where OpenOOD uses +1.

ODIN cannot score cached features: ``needs_network = True``; call :meth:`ODIN.score_images`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from grood.detectors._common import DEFAULT_CHUNK_ROWS, BaselineDetector
from grood.device import resolve_device
from grood.featureset import FeatureSet, LinearHead
from grood.progress import track
from grood.valid_values import Count, NonNegative, Positive, checked_arguments

#: OpenOOD v1.5's normalisation std per ID dataset (``openood/preprocessors/transform.py``), the
#: ``input_std`` it uses for ODIN (unknown datasets fall back to 0.5 per channel there).
OPENOOD_INPUT_STD: dict[str, tuple[float, float, float]] = {
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2675, 0.2565, 0.2761),
    "imagenet": (0.229, 0.224, 0.225),
    "imagenet200": (0.229, 0.224, 0.225),
}


def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a loader batch: a tensor, ``(images, labels, ...)`` or ``{"data": images}``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and isinstance(batch.get("data"), torch.Tensor):
        return batch["data"]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        "ODIN.score_images: each loader batch must be an image tensor [B, 3, H, W], a tuple/list whose first "
        f"item is one, or a dict with key 'data'; got {type(batch).__name__}"
    )


def _network_device(network: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else fallback


class ODIN(BaselineDetector):
    """ODIN: max softmax at temperature ``T`` of the input perturbed against the predicted class's loss.

    Args:
        temperature: ``T`` (OpenOOD ``odin.yml``: 1000).
        noise: perturbation size ``epsilon`` (OpenOOD: 0.0014).
        input_std: per-channel std of the input normalisation, or an OpenOOD dataset name (key of
            :data:`OPENOOD_INPUT_STD`). Required by :meth:`score_images`.
        chunk_rows: unused (the loader sets the batches); kept so every detector takes the same arguments.
    """

    name: ClassVar[str] = "odin"
    reference: ClassVar[str] = (
        "Liang, Li & Srikant, Enhancing The Reliability of Out-of-distribution Image Detection in Neural "
        "Networks, ICLR 2018"
    )
    needs_network: ClassVar[bool] = True
    sweep: ClassVar[dict[str, list]] = {"temperature": [1, 10, 100, 1000], "noise": [0.0014, 0.0028]}

    @checked_arguments
    def __init__(
        self,
        temperature: Positive = 1000.0,
        noise: NonNegative = 0.0014,
        input_std: Sequence[float] | str | None = None,
        chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.temperature = float(temperature)
        self.noise = float(noise)
        self.input_std = self._resolve_std(input_std)

    @staticmethod
    def _resolve_std(input_std: Sequence[float] | str | None) -> tuple[float, ...] | None:
        if input_std is None:
            return None
        if isinstance(input_std, str):
            if input_std not in OPENOOD_INPUT_STD:
                raise ValueError(
                    f"ODIN: unknown dataset {input_std!r} for input_std; known: {', '.join(OPENOOD_INPUT_STD)} "
                    "(or pass the per-channel std values)"
                )
            return OPENOOD_INPUT_STD[input_std]
        values = tuple(float(v) for v in input_std)
        if not values or not all(v > 0 for v in values):
            raise ValueError(f"ODIN: input_std must be positive per-channel values; got {input_std!r}")
        return values

    def fit(self, train: FeatureSet, head: LinearHead) -> "ODIN":
        """Nothing to fit (only checks shapes); ODIN scores images with :meth:`score_images`."""
        self._start_fit(train, head)
        self._fitted = True
        return self

    def score(self, data: FeatureSet) -> torch.Tensor:
        raise RuntimeError(
            "ODIN perturbs the input images, so it cannot score cached features; call "
            "ODIN.score_images(network, loader) (needs_network is True)"
        )

    def perturb(self, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """ODIN steps 1-2: ``x' = x - noise * sign(dL/dx) / std`` for ``images [B, 3, H, W]``."""
        if self.input_std is None:
            raise ValueError(
                "ODIN needs input_std, the per-channel std of the input normalisation (e.g. OpenOOD's cifar10 "
                f"{OPENOOD_INPUT_STD['cifar10']}); pass input_std=... or input_std='cifar10' to the constructor"
            )
        if images.dim() != 4 or images.shape[1] != len(self.input_std):
            raise ValueError(
                f"ODIN: images must be [B, {len(self.input_std)}, H, W] (one std per channel); "
                f"got {tuple(images.shape)}"
            )
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = network(x)
            predicted = logits.detach().argmax(dim=1)
            loss = F.cross_entropy(logits / self.temperature, predicted, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, x)
        direction = torch.where(gradient >= 0, 1.0, -1.0).to(images.dtype)
        std = torch.tensor(self.input_std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return images.detach() - self.noise * direction / std

    def score_images(
        self, network: nn.Module, loader: Iterable[Any], device: str | torch.device | None = None,
        progress: bool = False, description: str = "ODIN perturbation pass",
    ) -> torch.Tensor:
        """``[N]`` CPU ODIN scores (higher = more ID) of every image the loader yields, in order.

        Args:
            network: any module mapping images ``[B, 3, H, W]`` to logits ``[B, C]``; run in eval mode
                (its previous mode is restored afterwards). Its parameters get no gradients.
            loader: yields image tensors, ``(images, labels, ...)`` tuples or ``{"data": images}`` dicts.
            device: where the images go (None: the device of the network's parameters, else the
                detector's ``device``). The network is not moved.
            progress: a tqdm bar; False logs the pass's start and end (:mod:`grood.progress`).
        """
        self._check_fitted()
        run_on = resolve_device(device) if device is not None else _network_device(network, self.device)
        was_training = network.training
        network.eval()
        parts = []
        try:
            for batch in track(loader, description, progress):
                images = _images_of(batch).to(run_on)
                perturbed = self.perturb(network, images)
                with torch.no_grad():
                    logits = network(perturbed) / self.temperature
                parts.append(torch.softmax(logits, dim=1).max(dim=1).values.detach().cpu())
        finally:
            network.train(was_training)
        if not parts:
            raise ValueError("ODIN.score_images: the loader yielded no batch")
        return torch.cat(parts)
