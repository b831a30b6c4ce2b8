"""Started with the torchrun test's train.py processes (on PYTHONPATH): each checkpoint write is recorded with the
rank of the process that made it, in the file UNET_TEST_WRITES names. The launcher (no RANK) is left alone."""

import os
import sys

if os.environ.get("UNET_TEST_WRITES") and os.environ.get("RANK") is not None:
    sys.path.insert(0, os.environ["UNET_TEST_REPO"])
    import utils.checkpoint as checkpoint

    _write = checkpoint.write_checkpoint

    def _recorded(path, payload) -> None:  # noqa: ANN001
        _write(path, payload)
        with open(os.environ["UNET_TEST_WRITES"], "a") as log:
            log.write(f"{os.environ['RANK']} {os.path.basename(path)}\n")

    checkpoint.write_checkpoint = _recorded
    sys.path.remove(os.environ["UNET_TEST_REPO"])
