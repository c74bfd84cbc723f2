"""The lab: experiments (real vs synthetic attention, probes, TAR, PE comparison), recording of
real videos, video evaluation metrics, figures, sweeps on dask, and the demo. Builds on the
core, the edits, data and models."""
