"""Training: LightningModule, callbacks and the end-to-end ``train`` function."""
