"""``strategy: fsdp``: Lightning's `FSDPStrategy`, made to run on CPUs as well as GPUs.

Lightning 2.6 runs FSDP on GPUs only, for three reasons that are all on its side of the call:

1. Its accelerator check refuses ``FSDPStrategy`` with ``accelerator: cpu`` (it checks the exact
   type, so a subclass passes).
2. It wraps the model with ``device_id=root_device.index``, which is ``None`` for the CPU; torch's
   FSDP then looks for a GPU. Here a CPU model is wrapped with ``device_id=torch.device("cpu")``.
3. It gathers the full state dict (for ``save_pretrained`` and for ``last.ckpt``) with
   ``offload_to_cpu=True``; when the parameters live on the CPU already, torch (2.13) then hands back
   views of the gathered flat parameter, frees it, and segfaults copying them. On the CPU the
   gather here asks for no offload (the tensors are on the CPU either way).

On GPUs every method is Lightning's own. With this, ``strategy: fsdp`` runs on CPU processes (gloo),
so its sharding, gathering, checkpoints and resume are tested on any machine
(``tests/plugins/lightning/test_trainers_distributed.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDP
from torch.distributed.fsdp import FullStateDictConfig, OptimStateKeyType, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.api import FullOptimStateDictConfig
from torch.nn import Module


class FSDPStrategy(LightningFSDP):
    """Full-shard FSDP with a full state dict, on GPUs (Lightning's behaviour) or CPUs (gloo)."""

    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def _setup_model(self, model: Module) -> Module:
        if self._on_cpu() and not any(isinstance(m, FSDP) for m in model.modules()):
            model = FSDP(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
        return super()._setup_model(model)  # wraps a GPU model; the rest (metrics, checkpointing) for both

    @contextlib.contextmanager
    def _full_state_on_cpu(self) -> Iterator[None]:
        """Gather full (model and optimizer) state dicts to rank 0, without the offload that crashes on CPUs."""
        assert self.model is not None
        with FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        ):
            yield

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if not self._on_cpu() or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        assert self.model is not None
        with self._full_state_on_cpu():
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if not self._on_cpu() or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        assert self.model is not None
        with self._full_state_on_cpu():
            state: dict[str, Any] = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # the standard layout, as Lightning's own full checkpoints have
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state
