# GPU image: `docker build -t unet . && docker run --gpus all -it --shm-size=8g -v $PWD/data:/workspace/unet/data
#   -v $PWD/checkpoints:/workspace/unet/checkpoints unet` (mount checkpoints/: files written only inside the
#   container are lost with it)
# The base image already holds a CUDA build of torch with its matching torchvision, so the exact
# torch/torchvision pins in requirements.txt (chosen for local virtual environments) are left out here.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/unet
COPY requirements.txt .
RUN grep -vE '^(torch|torchvision)==' requirements.txt > /tmp/requirements-base.txt \
    && pip install --no-cache-dir -r /tmp/requirements-base.txt \
    && rm /tmp/requirements-base.txt
COPY . .

CMD ["bash"]
