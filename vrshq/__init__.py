"""vrshq: VRS-HQ video reasoning segmentation (model and metrics library; imports no Ray)."""
