"""RepAn training (Algorithm 1): the cycle driver (:mod:`.cycles`), the classification trainer
behind ``repan-train``, λ schedules Θ(r, e) and the KD loss. The run infrastructure it shares
with detection (process group, checkpoints, reports) lives in :mod:`repan_zoo.runtime`."""
from .config import FIRST_CYCLE_MODES, METHODS, CyclePlan, TrainConfig
from .kd import KDLoss, build_teacher
from .schedules import LAMBDA_SCHEDULES, LambdaSchedule, cosine_lr, register_lambda_schedule
from .trainer import RepAnTrainer, TrainResult, build_model

__all__ = [
    "TrainConfig",
    "CyclePlan",
    "METHODS",
    "FIRST_CYCLE_MODES",
    "KDLoss",
    "build_teacher",
    "LAMBDA_SCHEDULES",
    "LambdaSchedule",
    "register_lambda_schedule",
    "cosine_lr",
    "RepAnTrainer",
    "TrainResult",
    "build_model",
]
