"""Memory of one eval-mode forward pass per input pixel: the figure behind --tile auto (utils/inference.py).

    python bench/inference_memory.py                    # CPU: peak of live tensors, counted op by op
    python bench/inference_memory.py --device cuda      # GPU: the CUDA allocator's peak, cuDNN workspaces included

On the CPU there is no allocator peak to read, so every tensor an operator returns is counted until it is
freed (a TorchDispatchMode with weak references); on CUDA torch.cuda.max_memory_allocated is read around the
forward pass. Both in fp32 and under bf16 autocast, at two sizes to show the figure is per pixel.
"""

import argparse
import sys
import weakref
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import base_channels, height_x_width  # noqa: E402
from unet import CLASSIC_BASE_CHANNELS, UNet  # noqa: E402
from utils.device import Precision, choose_device, memory_format  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.inference import bytes_per_pixel  # noqa: E402


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of storage held by tensors that operators returned and that are still referenced; and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.holders: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if self.holders[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.holders[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        result = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(result)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.holders:
                    self.holders[key], self.sizes[key] = 0, storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.holders[key] += 1
                weakref.finalize(tensor, self._release, key)
        return result


@torch.inference_mode()
def forward_peak(model: UNet, height: int, width: int, device: torch.device, dtype: torch.dtype | None) -> int:
    images = torch.rand(1, 3, height, width, device=device).contiguous(memory_format=memory_format(device))
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    with autocast:
        model(images)  # warm-up: cuDNN autotuning, autocast's weight copies
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model(images)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - before
        counter = LiveTensorBytes()
        with counter:
            model(images)
        return counter.peak


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")
    parser.add_argument("--sizes", nargs="+", type=height_x_width, default=[(320, 480), (640, 959)],
                        help="HxW input sizes")
    parser.add_argument("--base-channels", type=base_channels, default=CLASSIC_BASE_CHANNELS,
                        help="the model's width, as train.py's flag (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    device = choose_device(args.device)
    model = UNet(3, 2, base_channels=args.base_channels).to(device, memory_format=memory_format(device)).eval()
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for height, width in args.sizes:
            peak = forward_peak(model, height, width, device, dtype)
            budgeted = bytes_per_pixel(Precision(device.type, dtype), args.base_channels)
            print(f"{device.type} {name} {height}x{width}: peak {peak / 2**20:.0f} MiB = "
                  f"{peak / (height * width):.0f} bytes per pixel (--tile auto budgets {budgeted})", flush=True)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
