"""Everything but the model: data, masks, metrics, checkpoints, device, logging, plotting."""
