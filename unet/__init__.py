from .unet_model import (
    CLASSIC_BASE_CHANNELS,
    LONE_IMAGE_MIN_SIDE,
    MAX_BASE_CHANNELS,
    MIN_SIDE,
    UNet,
    whole_number,
)

__all__ = ["CLASSIC_BASE_CHANNELS", "LONE_IMAGE_MIN_SIDE", "MAX_BASE_CHANNELS", "MIN_SIDE", "UNet", "whole_number"]
