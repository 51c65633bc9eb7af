"""``"faiss_flat"``: FAISS ``IndexFlatL2``, exact search (CPU, or GPU when faiss has it and the vectors are CUDA)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from grood.io import atomic_file
from grood.method.neighbours.base import NeighbourIndex, _faiss, _faiss_gpu_available, _to_faiss, log


class _FaissIndex(NeighbourIndex):
    """FAISS plumbing shared by "faiss_flat" and "faiss_ivf": GPU copy, squared-distance conversion, file I/O."""

    faiss_type: ClassVar[str] = ""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.index: Any = None  # created by the subclass (or at the first add for IVF)
        self.on_gpu = False
        self._gpu_resources: Any = None

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _move_to_gpu_if_cuda(self, device: torch.device) -> None:
        if device.type != "cuda" or self.on_gpu:
            return
        if not _faiss_gpu_available():
            log.warning(
                "the %r index got CUDA vectors but the installed faiss has no GPU support, so FAISS searches on "
                "the CPU (vectors are copied there); install faiss-gpu (environment.yml) or use index='torch', "
                "which searches on the GPU", self.kind,
            )
            return
        faiss = _faiss()
        self._gpu_resources = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(self._gpu_resources, device.index or 0, self.index)
        self.on_gpu = True

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        squared, indices = self.index.search(_to_faiss(queries), k)
        missing = indices < 0
        if missing.any():
            rows = int(missing.any(axis=1).sum())
            raise RuntimeError(
                f"the {self.kind!r} index found fewer than k={k} neighbours for {rows} of {len(indices)} queries "
                f"(the cells it probed hold too few vectors); raise nprobe or use the 'exact' index"
            )
        distances = torch.from_numpy(squared).clamp_(min=0.0).sqrt_()
        return distances, torch.from_numpy(indices)

    def save(self, path: str | os.PathLike[str]) -> None:
        if self.index is None:
            raise ValueError(f"nothing to save: the {self.kind!r} index is empty; add() vectors first")
        faiss = _faiss()
        cpu_index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        with atomic_file(path) as tmp:
            faiss.write_index(cpu_index, str(tmp))

    @classmethod
    def _read(cls, path: str | os.PathLike[str]) -> Any:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no index file at {path}")
        faiss = _faiss()
        index = faiss.read_index(str(path))  # returned as its concrete class (IndexFlatL2, IndexIVFFlat)
        if type(index).__name__ != cls.faiss_type:
            raise ValueError(f"{path} holds a FAISS {type(index).__name__}, not the {cls.faiss_type} of kind {cls.kind!r}")
        return index


class ExactIndex(_FaissIndex):
    """``"faiss_flat"``: FAISS ``IndexFlatL2`` (brute force, exact)."""

    kind = "faiss_flat"
    faiss_type = "IndexFlatL2"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.index = _faiss().IndexFlatL2(self.dim)

    def _add(self, vectors: torch.Tensor) -> None:
        self._move_to_gpu_if_cuda(vectors.device)
        self.index.add(_to_faiss(vectors))

    def reserve(self, count: int) -> None:
        """Grow the CPU index's code storage to ``ntotal + count`` vectors now (one allocation), then
        give the size back: the capacity stays, so the adds that follow copy without reallocating.
        A GPU index (created at the first CUDA add) ignores it."""
        super().reserve(count)
        codes = getattr(self.index, "codes", None)
        if self.on_gpu or codes is None or not hasattr(codes, "resize"):
            return
        used = int(codes.size())
        codes.resize(used + int(count) * self.dim * 4)  # float32 codes: 4 bytes per dimension
        codes.resize(used)  # std::vector keeps its capacity when it shrinks

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = None) -> "ExactIndex":
        faiss_index = cls._read(path)
        index = cls(faiss_index.d)
        index.index = faiss_index
        if device is not None:
            index._move_to_gpu_if_cuda(torch.device(device))
        return index
