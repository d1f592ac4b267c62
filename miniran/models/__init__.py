"""Residual units, the attention module, the networks of the paper, model summaries, and the
shipped trained Attention-56 (``attention56(pretrained=True)``)."""

from miniran.models.attention import (
    ATTENTION_TYPES,
    MASK_TYPES,
    AttentionModule,
    EncoderDecoderMask,
    LocalConvMask,
    MaskHead,
)
from miniran.models.networks import (
    MODELS,
    ResidualAttentionNetwork,
    attention56,
    attention56_imagenet,
    attention92,
    attention92_imagenet,
    attention128,
    attention164,
    attention236,
    attention452,
    get_model,
    resnet164,
)
from miniran.models.pretrained import (
    PRETRAINED,
    PRETRAINED_DIR,
    load_pretrained,
    pretrained_available,
    pretrained_metadata,
    pretrained_path,
)
from miniran.models.residual import PreActBottleneck, residual_stack
from miniran.models.summary import Summary, capture_outputs, summary

__all__ = [
    "ATTENTION_TYPES", "MASK_TYPES", "MODELS", "AttentionModule", "EncoderDecoderMask",
    "LocalConvMask", "MaskHead", "PRETRAINED", "PRETRAINED_DIR", "PreActBottleneck",
    "ResidualAttentionNetwork", "Summary",
    "attention56", "attention56_imagenet", "attention92", "attention92_imagenet", "attention128",
    "attention164", "attention236", "attention452", "capture_outputs", "get_model",
    "load_pretrained", "pretrained_available", "pretrained_metadata", "pretrained_path",
    "residual_stack", "resnet164", "summary",
]
