"""`receipt-streams ctl`: the operator's tool (status, reset, rebuild, diff, dlq, inspect).

One module per command. Each keeps its Kafka I/O in small functions and its planning pure, so
the decisions (what moves where, what is re-driven, what differs) are unit-tested apart.
"""
