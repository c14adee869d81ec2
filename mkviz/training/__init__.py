"""Layer 4, training: a run from a TrainConfig to checkpoints and results. Imports core, data, explain.

    config        TrainConfig, presets, the model spec a configuration implies
    inputs        the datasets of a run and the sampler that fixes their order
    distributed   one process or several (torchrun)
    run_dir       the run folder: what may be written, resuming with the same settings, history files
    optim         the optimiser and its parameter groups
    tasks         what a run learns: classification, segmentation (model, step loss, evaluation, collation)
    checkpoint    checkpoint files: safetensors + JSON, atomic writes, finding and resuming
    build         models from a spec or a checkpoint folder (`build_model`, `load_checkpoint`)
    timm_hub      checkpoint folders in timm's Hub format (config.json keys), migrating older folders
    loop          `train(cfg)`, `evaluate`, the learning-rate schedule
    command       `mkviz train`: options -> TrainConfig

The names below are the public API of the old modules `mkviz.train` and `mkviz.checkpoint`, both of which
are now this package.
"""
from .build import (apply_data_config, build_model, derive_data_config, describe_spec, load_checkpoint,
                    model_input_size, state_dict_mismatch)
from .checkpoint import (CheckpointError, CKPT_DIR, CONFIG_FILE, LATEST_FILE, MODEL_FILE, OPTIM_FILE, STATE_FILE,
                         atomic_write_bytes, atomic_write_json, check_checkpoint, check_output_dir,
                         export_checkpoint, find_checkpoint, list_checkpoints, load_tensors, optimizer_from_tensors,
                         optimizer_to_tensors, read_json, resume_checkpoint, rng_state, save_tensors, set_rng_state,
                         shipped_checkpoints_dir, write_checkpoint_dir)
from .command import config_from_args, main, make_parser
from .config import PRESETS, RUNTIME_FIELDS, TrainConfig, model_spec, num_classes_of
from .inputs import EpochBatchSampler, build_datasets
from .loop import evaluate, lr_at, train
from .run_dir import changed_settings
from .tasks import TASKS, Task, build_backbone, evaluate_segmentation, spec_classes

__all__ = [
    "TrainConfig", "PRESETS", "train", "evaluate", "build_datasets", "changed_settings", "model_spec",
    "num_classes_of", "RUNTIME_FIELDS", "EpochBatchSampler", "lr_at", "main", "config_from_args", "make_parser",
    "CheckpointError", "atomic_write_bytes", "atomic_write_json", "save_tensors", "load_tensors", "read_json",
    "optimizer_to_tensors", "optimizer_from_tensors", "rng_state", "set_rng_state", "write_checkpoint_dir",
    "find_checkpoint", "list_checkpoints", "export_checkpoint", "check_checkpoint", "resume_checkpoint",
    "check_output_dir", "MODEL_FILE", "CONFIG_FILE", "OPTIM_FILE", "STATE_FILE", "LATEST_FILE", "CKPT_DIR",
    "shipped_checkpoints_dir", "load_checkpoint", "build_model", "apply_data_config", "describe_spec",
    "state_dict_mismatch", "model_input_size", "derive_data_config", "TASKS", "Task", "build_backbone",
    "evaluate_segmentation", "spec_classes",
]
