"""Migration in: bring an existing homeserver's read state into the input topics."""
