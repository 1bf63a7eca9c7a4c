"""Release inference: the PD fusion, R3, self-ensemble, the compiled batch denoiser and tiling."""
