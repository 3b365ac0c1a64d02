"""`receipt-streams bench`: the pipeline measured beside the ceiling of the same broker."""
