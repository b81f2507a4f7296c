"""Vendor baselines: what NVIDIA's own libraries do with the same GEMM, timed through torch.

Every baseline computes exactly what our kernels compute, in the same layout:

    YT (N x M) = W (N x K, pruned, fp16) @ XT (K x M, fp16, contiguous)

so each library gets the K-major activations our kernels get, and nobody pays for a
transpose the others do not. The four, each on the weight pruned by *our* pruner from the
same seeded matrix (`tvwsim.kernels.prepare.synthetic_weight`) so the kept weights are identical:

- `cublas` (dense): `torch.mm(W, XT, out=YT)`, cuBLAS, fp16 in, fp32 accumulation;
- `cusparselt` (vw, 2:4): `torch._cslt_sparse_mm(compressed W, XT)` with the algorithm
  `torch._cslt_sparse_mm_search` picks, cuSPARSELt;
- `cusparse-csr` (ew): `torch.mm(W.to_sparse_csr(), XT)`, cuSPARSE SpMM;
- `cusparse-bsr` (bw): `torch.mm(W.to_sparse_bsr((b, b)), XT)`, cuSPARSE bsrmm or
  whatever this torch dispatches a BSR product to (the row's `kernel` names the call).

cuSPARSE has no fp16 block-sparse product, and some torch builds have no fp16 CSR one:
if the fp16 call raises, the baseline is retried in fp32 and its row says so
(`extra.dtype`). A library that is absent (cuSPARSELt in a torch built without it) makes
the point *skipped*, not failed: the sweep goes on and a later run may measure it.

torch is imported lazily (`import_torch`), never at module import: the rest of tvwsim
does not need it, and a machine without it still runs our kernels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvwsim.validate.points import BASELINES, PointSkipped


def import_torch():
    """The torch module if it is importable and sees a CUDA device, else None."""
    try:
        import torch
    except ImportError:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken driver must not stop our own kernels
        return None


@dataclass
class PreparedBaseline:
    """A vendor GEMM with its operands resident on the device."""

    routine: str
    """What runs, e.g. 'torch.mm fp16 (cuBLAS)'."""
    launch: Callable[[], Any]
    """One launch on the resident operands (asynchronous, default stream)."""
    result: Callable[[], Any]
    """The last launch's YT as a torch tensor (N x M)."""
    info: dict = field(default_factory=dict)
    """dtype, torch version, algorithm id ...: goes into the row's `extra`."""

    def run(self) -> np.ndarray:
        """Launch once and return Y (M x N, float32) on the host."""
        self.launch()
        yt = self.result()
        return yt.float().t().contiguous().cpu().numpy()


class TorchBaselines:
    """Prepares the four vendor baselines on one device."""

    def __init__(self, torch, device: str = "cuda"):
        self.torch = torch
        self.device = torch.device(device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def prepare(
        self, implementation: str, x16: np.ndarray, w16: np.ndarray, *, block: int = 32
    ) -> PreparedBaseline:
        """Operands on the device and a launch closure for `implementation`.

        `x16` is X (M x K) fp16, `w16` the pruned weight (N x K) fp16 with zeros where
        pruned. Raises PointSkipped when this torch cannot run the baseline at all.
        """
        if implementation not in BASELINES:
            raise ValueError(f"unknown baseline {implementation!r}")
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x16.T)).to(self.device)
        w = torch.from_numpy(np.ascontiguousarray(w16)).to(self.device)
        info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda}
        builder = {
            "cublas": self._cublas,
            "cusparselt": self._cusparselt,
            "cusparse-csr": lambda w, xt, info: self._sparse(w, xt, info, "csr", block),
            "cusparse-bsr": lambda w, xt, info: self._sparse(w, xt, info, "bsr", block),
        }[implementation]
        prepared = builder(w, xt, info)
        # One trial launch: a shape or dtype the library refuses is a limit of the library
        # (skipped, retried by a later run), not a failed measurement.
        try:
            prepared.launch()
            self.synchronize()
        except (RuntimeError, NotImplementedError) as err:
            raise PointSkipped(
                f"{prepared.routine} refused this GEMM: {str(err).splitlines()[0]}"
            ) from None
        return prepared

    # -- the four ------------------------------------------------------------------------
    def _cublas(self, w, xt, info) -> PreparedBaseline:
        torch = self.torch
        yt = torch.empty((w.shape[0], xt.shape[1]), dtype=torch.float16, device=self.device)
        return PreparedBaseline(
            "torch.mm fp16 (cuBLAS)",
            lambda: torch.mm(w, xt, out=yt),
            lambda: yt,
            {**info, "dtype": "fp16"},
        )

    def _cusparselt(self, w, xt, info) -> PreparedBaseline:
        torch = self.torch
        available = getattr(getattr(torch.backends, "cusparselt", None), "is_available", None)
        if available is None or not available():
            raise PointSkipped("this torch has no cuSPARSELt (torch.backends.cusparselt)")
        if not hasattr(torch, "_cslt_compress") or not hasattr(torch, "_cslt_sparse_mm"):
            raise PointSkipped("this torch lacks torch._cslt_compress / _cslt_sparse_mm")
        version = getattr(torch.backends.cusparselt, "version", lambda: None)()
        try:
            compressed = torch._cslt_compress(w)
        except RuntimeError as err:
            # Shapes cuSPARSELt refuses (too small, not aligned) are a limit of the library.
            raise PointSkipped(
                f"cuSPARSELt refused the weight: {str(err).splitlines()[0]}"
            ) from None
        alg_id = 0
        search = getattr(torch, "_cslt_sparse_mm_search", None)
        if search is not None:
            try:
                alg_id = int(search(compressed, xt))
            except (RuntimeError, TypeError):
                alg_id = 0
        holder: dict[str, Any] = {}

        def launch():
            try:
                holder["yt"] = torch._cslt_sparse_mm(compressed, xt, alg_id=alg_id)
            except TypeError:  # older signature without alg_id
                holder["yt"] = torch._cslt_sparse_mm(compressed, xt)

        return PreparedBaseline(
            "torch._cslt_sparse_mm fp16 (cuSPARSELt)",
            launch,
            lambda: holder["yt"],
            {**info, "dtype": "fp16", "alg_id": alg_id, "cusparselt": version},
        )

    def _sparse(self, w, xt, info, layout: str, block: int) -> PreparedBaseline:
        torch = self.torch
        errors = []
        for dtype, name in ((torch.float16, "fp16"), (torch.float32, "fp32")):
            wd, xd = w.to(dtype), xt.to(dtype)
            try:
                with warnings.catch_warnings():
                    # "Sparse CSR tensor support is in beta state": known, and not ours.
                    warnings.simplefilter("ignore", UserWarning)
                    if layout == "csr":
                        sparse = wd.to_sparse_csr()
                    else:
                        sparse = wd.to_sparse_bsr((block, block))
                torch.mm(sparse, xd)  # does this dtype work at all?
                self.synchronize()
            except (RuntimeError, NotImplementedError) as err:
                errors.append(f"{name}: {str(err).splitlines()[0]}")
                continue
            launch, result = _keep_result(lambda sparse=sparse, xd=xd: torch.mm(sparse, xd))
            library = "cuSPARSE SpMM" if layout == "csr" else "torch BSR mm"
            extra = {**info, "dtype": name, "stored_values": int(sparse.values().numel())}
            if layout == "bsr":
                extra["block"] = block
            if errors:
                extra["fallback_reason"] = "; ".join(errors)
            return PreparedBaseline(
                f"torch.mm {layout.upper()} {name} ({library})",
                launch,
                result,
                extra,
            )
        raise PointSkipped(f"torch cannot multiply a {layout.upper()} weight: {'; '.join(errors)}")


def _keep_result(call: Callable[[], Any]) -> tuple[Callable[[], None], Callable[[], Any]]:
    """(launch, result): `launch` runs `call` and keeps what it returned for `result`."""
    holder: dict[str, Any] = {}

    def launch() -> None:
        holder["out"] = call()

    return launch, lambda: holder["out"]
