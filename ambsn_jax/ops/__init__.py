"""Operations the networks and the inference are made of: the convolution, pixel-shuffle down-sampling, window grids."""
