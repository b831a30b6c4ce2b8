from .unet_model import MIN_SIDE, UNet

__all__ = ["MIN_SIDE", "UNet"]
