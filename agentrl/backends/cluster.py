"""Ray, shared by the env workers (rollout.workers) and the generator replicas (backend.replicas). Optional:
nothing imports ray until one of them is configured."""
from __future__ import annotations

import math
import os

INSTALL_HINT = 'needs ray: pip install "agentrl[scale]"'


def require_ray(what: str = "this feature"):
    """The ray module, or ImportError naming `what` and the install command."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"{what} {INSTALL_HINT}") from None
    return ray


def init_ray(address: str = "", min_cpus: float = 0.0) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); without either start a local one with at least `min_cpus`
    logical CPUs (more actors than cores is fine for I/O-bound work). No-op when Ray is already initialised."""
    ray = require_ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)), include_dashboard=False,
                 ignore_reinit_error=True, log_to_driver=False)
