"""The same fold as a faust-streaming agent over Faust tables (RECEIPT_STREAMS_ENGINE=faust)."""
