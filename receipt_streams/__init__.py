"""receipt-streams: Matrix read receipts as a horizontally scalable Kafka stream processor."""

__version__ = "0.1.0"
