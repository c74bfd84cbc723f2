"""Data: videos (decord / PyAV), sample clips and datasets, inter-frame similarity (DreamSim,
ST-LPIPS, pixels), attention-map metrics, and the procedural video world with its evaluator.
Builds on :mod:`attnlab.core` only."""
