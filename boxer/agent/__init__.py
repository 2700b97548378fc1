"""The per-instance agent: makes one application process a host of the overlay."""
