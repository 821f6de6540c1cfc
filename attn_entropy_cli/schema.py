"""Column names of the tidy tables and the option groups that travel together."""

from __future__ import annotations

# the long table of run metrics
RUN = "run"
SOURCE = "source"  # "log" or "tensorboard"
SPLIT = "split"  # "progress", "train" or "valid"
STEP = "step"
METRIC = "metric"
VALUE = "value"
WALL_TIME = "wall_time"  # seconds since the epoch, UTC
RUN_COLUMNS = [RUN, SOURCE, SPLIT, STEP, METRIC, VALUE, WALL_TIME]

SOURCE_LOG = "log"
SOURCE_TENSORBOARD = "tensorboard"
SPLITS = ("progress", "train", "valid")

ATTENTION_ENTROPY = "attention_entropy"

# the long table of recomputed entropy
CHECKPOINT = "checkpoint"
ATTN_TYPE = "attn_type"
LAYER = "layer"
HEAD = "head"
ENTROPY = "entropy"
NORMALIZED_ENTROPY = "normalized_entropy"
N_ROWS = "n_rows"
STD = "std"
UNIT = "unit"  # present, as "bits", only in tables written with --bits; nats otherwise
ENTROPY_COLUMNS = [CHECKPOINT, ATTN_TYPE, LAYER, HEAD, ENTROPY, NORMALIZED_ENTROPY, N_ROWS, STD]

ATTN_TYPES = ("enc_self", "self", "context", "std")
