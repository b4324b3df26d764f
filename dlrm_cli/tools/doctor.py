"""The checks behind ``dlrm doctor``. Each is independent: one failing import never hides the others."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from dlrm_cli.runtime.threads import available_cpus, chosen_threads
from dlrm_cli.store.checkpoints import CheckpointStore

# TorchRec and FBGEMM are released in lockstep with PyTorch; these pairs are known to work together.
KNOWN_GOOD = {("1.8", "2.13"), ("1.7", "2.12"), ("1.6", "2.11"), ("1.5", "2.10"), ("1.4", "2.9"), ("1.3", "2.8")}
CPU_INSTALL = "pip install --no-deps torchrec==1.8.0 && pip install fbgemm-gpu-cpu==1.8.0 torch==2.13.0"


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail or info
    detail: str
    fix: str = ""


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def _minor(version: str | None) -> str:
    return ".".join((version or "").split("+")[0].split(".")[:2])


def run_checks(store: Path) -> list[Check]:
    checks = [
        Check(
            "python",
            "ok" if sys.version_info >= (3, 11) else "fail",
            platform.python_version(),
            "dlrm needs Python 3.11 or newer",
        )
    ]
    torch_version = _version("torch")
    checks.append(
        Check("torch", "ok" if torch_version else "fail", torch_version or "not installed", "pip install torch==2.13.0")
    )
    cpu, gpu = _version("fbgemm-gpu-cpu"), _version("fbgemm-gpu")
    fbgemm = cpu or gpu
    detail = f"{'fbgemm-gpu-cpu' if cpu else 'fbgemm-gpu'} {fbgemm}" if fbgemm else "not installed"
    if cpu and gpu:
        both = f"both fbgemm-gpu {gpu} and fbgemm-gpu-cpu {cpu} are installed"
        fix = "pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu, then install the one for your machine"
        checks.append(Check("fbgemm", "fail", both, fix))
    else:
        checks.append(Check("fbgemm", "ok" if fbgemm else "fail", detail, CPU_INSTALL))
    torchrec_version = _version("torchrec")
    checks.append(
        Check("torchrec", "ok" if torchrec_version else "fail", torchrec_version or "not installed", CPU_INSTALL)
    )
    if torch_version and fbgemm and torchrec_version:
        pair = (_minor(torchrec_version), _minor(torch_version))
        fits = _minor(torchrec_version) == _minor(fbgemm) and pair in KNOWN_GOOD
        checks.append(
            Check(
                "versions fit",
                "ok" if fits else "warn",
                f"torchrec {pair[0]}, fbgemm {_minor(fbgemm)}, torch {pair[1]}"
                + ("" if fits else ": not a combination known to work"),
                f"use matching releases, e.g. {CPU_INSTALL}",
            )
        )
    checks.extend(_runtime_checks())
    checks.append(_store_check(store))
    return checks


def _runtime_checks() -> list[Check]:
    checks = []
    try:
        import torch
    except Exception as error:  # any import failure is the finding
        return [Check("torch import", "fail", f"{type(error).__name__}: {error}", "reinstall torch")]
    try:
        import fbgemm_gpu  # noqa: F401

        out = torch.ops.fbgemm.asynchronous_complete_cumsum(torch.tensor([1, 2, 3]))
        ok = out.tolist() == [0, 1, 3, 6]
        checks.append(
            Check("fbgemm operators", "ok" if ok else "fail", "load and run" if ok else f"wrong result {out}")
        )
    except Exception as error:  # a broken FBGEMM fails in many ways; each is the finding, shown as a red line
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        fix = CPU_INSTALL
        if "nvidia-ml" in message or "libcuda" in message:
            fix = (
                "this is the CUDA build of fbgemm on a machine without an NVIDIA driver: "
                f"pip uninstall -y fbgemm-gpu && {CPU_INSTALL}"
            )
        checks.append(Check("fbgemm operators", "fail", message, fix))
    try:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        from dlrm_cli.config import ModelConfig, TableConfig, TrainConfig
        from dlrm_cli.model.optim import build_for_training
        from dlrm_cli.training.run import train_step

        config = ModelConfig(num_dense=1, tables=(TableConfig("a", 4),), embedding_dim=4, bottom_mlp=(4,), top_mlp=(4,))
        model, optimizers = build_for_training(config, TrainConfig(), torch.device("cpu"))
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1]), torch.tensor([1]))
        train_step(model, optimizers, torch.zeros(1, 1), kjt, torch.tensor([3.0]))
        checks.append(Check("fused training step", "ok", "FusedEmbeddingBagCollection trains on the CPU"))
    except Exception as error:  # whatever stops a training step on this install is the finding
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        checks.append(Check("fused training step", "fail", message, "use --embeddings plain, or " + CPU_INSTALL))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        checks.append(Check("CUDA", "ok", f"{torch.cuda.device_count()} GPU(s): {names}"))
    else:
        checks.append(Check("CUDA", "info", "no GPU seen; dlrm runs on the CPU"))
    checks.append(Check("threads", "info", threads_detail(chosen_threads(None), available_cpus(), os.cpu_count())))
    return checks


def threads_detail(fixed: int | None, usable: int, cpus: int | None) -> str:
    """How training chooses torch's thread count here, in words."""
    if fixed:
        return f"OMP_NUM_THREADS fixes torch's threads at {fixed}"
    here = f"({usable} of {cpus} CPUs usable here; --threads fixes a count)"
    if usable <= 1:
        return f"training picks 1 thread {here}"
    return f"training picks 1 to {usable} threads by measurement {here}"


def _store_check(root: Path) -> Check:
    store = CheckpointStore(root)
    where = root.resolve()
    if root.exists() and not root.is_dir():
        return Check("store", "fail", f"{where} is not a folder", "point --store or DLRM_CHECKPOINT_DIR at a folder")
    if not root.exists():
        return Check("store", "ok", f"{where} (created on the first dlrm train)")
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    count = len(store.infos())
    writable = os.access(root, os.W_OK)
    return Check(
        "store",
        "ok" if writable else "fail",
        f"{where}: {count} checkpoint(s), {size / 1e6:.1f} MB" + ("" if writable else ", not writable"),
        "make the folder writable, or choose another with --store",
    )
