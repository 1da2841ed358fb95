"""Run infrastructure shared by every training task (classification and detection alike):
the process group (:mod:`.distributed`), per-epoch checkpoints that a killed run resumes from
(:mod:`.checkpointing`), run reports (:mod:`.report`: JSON files, metrics tables, learning
curves), the typed ``final.json`` of a classification run (:mod:`.summary`) and a guard against a
oneDNN bug in channels-last CPU training and a check for native bf16 kernels (:mod:`.onednn`), and
the name of the processor a run trains on (:mod:`.hardware`)."""
from .checkpointing import Checkpointer, RunCheckpoint, restore_rng_state, rng_state
from .distributed import DistContext, convert_sync_bn, init_distributed, unwrap, wrap_ddp
from .hardware import cpu_name, device_name
from .onednn import cpu_bf16_native, guard_strided_1x1
from .report import plot_learning_curve, write_json, write_metrics

__all__ = [
    "Checkpointer", "RunCheckpoint", "restore_rng_state", "rng_state",
    "DistContext", "convert_sync_bn", "init_distributed", "unwrap", "wrap_ddp", "guard_strided_1x1",
    "cpu_bf16_native", "cpu_name", "device_name",
    "plot_learning_curve", "write_json", "write_metrics",
]
