from .unet_model import LONE_IMAGE_MIN_SIDE, MIN_SIDE, UNet

__all__ = ["LONE_IMAGE_MIN_SIDE", "MIN_SIDE", "UNet"]
