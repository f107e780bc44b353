"""The three Lotgate services: suppliers, lots and results."""
