"""The releases' PyTorch side: their reference networks, state-dict ports, and conversion."""
