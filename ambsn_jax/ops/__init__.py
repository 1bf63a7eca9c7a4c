"""Operations the networks and the inference are made of: the convolution, the ReLU, pixel-shuffle down-sampling, window grids."""
