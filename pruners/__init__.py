"""Prunefront's pruning library: plain PyTorch, no Ray (see docs/design.md section 1)."""

from pruners.criteria import (
    Criterion,
    criterion_granularities,
    list_criteria,
    make_criterion,
)
from pruners.prune import GRANULARITIES, SCOPES, LayerReport, PruneReport, prune, score
from pruners.schedules import Dynamic, Gradual, Iterative, OneShot, Schedule, list_schedules, make_schedule
from pruners.thresholds import list_threshold_rules
from pruners._attention import PrunableMultiheadAttention, convert_attention
from pruners.spec import OptimizerConfig, PruneSpec
from pruners.calibration import CalibrationBatches
from pruners.pruner import Pruner
from pruners.loop import EpochEnd, evaluate, train_epochs
from pruners.finetune import finetune, ship_int8
from pruners.quantize import QUANTIZE_MODES, calibration_inputs, load_onnx, quantize_int8, save_onnx
from pruners.measure import Latency, Metrics, count_flops, measure, time_forward
from pruners.io import ModelFileError, UnsafeModelFile, check_model_file, load, load_metadata, save

__all__ = [
    "ModelFileError",
    "UnsafeModelFile",
    "check_model_file",
    "CalibrationBatches",
    "Latency",
    "Pruner",
    "EpochEnd",
    "evaluate",
    "train_epochs",
    "time_forward",
    "Metrics",
    "OptimizerConfig",
    "PruneSpec",
    "finetune",
    "ship_int8",
    "QUANTIZE_MODES",
    "calibration_inputs",
    "load_onnx",
    "quantize_int8",
    "save_onnx",
    "load",
    "load_metadata",
    "measure",
    "save",
    "GRANULARITIES",
    "Dynamic",
    "Gradual",
    "Iterative",
    "OneShot",
    "Schedule",
    "list_schedules",
    "make_schedule",
    "SCOPES",
    "Criterion",
    "LayerReport",
    "PruneReport",
    "criterion_granularities",
    "list_criteria",
    "list_threshold_rules",
    "make_criterion",
    "prune",
    "score",
    "PrunableMultiheadAttention",
    "convert_attention",
    "count_flops",
]
