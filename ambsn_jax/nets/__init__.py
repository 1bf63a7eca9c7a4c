"""The blind-spot networks (AM-BSN, AP-BSN, MM-BSN), their blocks and masks, and the registry."""
