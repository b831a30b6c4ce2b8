"""Started with the torchrun test's train.py processes (on PYTHONPATH): each checkpoint write is recorded with the
rank of the process that made it, in the file UNET_TEST_WRITES names, and so is the sum of the model's buffers
(BatchNorm's statistics) each process validates with. The launcher (no RANK) is left alone."""

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
    import utils.scoring as scoring

    _evaluate = scoring.evaluate

    def _recorded_evaluate(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        statistics = sum(float(buffer.double().sum()) for buffer in model.buffers())
        with open(os.environ["UNET_TEST_WRITES"], "a") as log:
            log.write(f"{os.environ['RANK']} validates with buffers summing to {statistics!r}\n")
        return _evaluate(model, *args, **kwargs)

    scoring.evaluate = _recorded_evaluate
    sys.path.remove(os.environ["UNET_TEST_REPO"])
