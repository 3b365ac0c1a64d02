"""The pure core: Matrix rules with no Kafka or Faust imports.

Everything here is plain Python over plain data, so every rule can be unit- and property-tested
without a broker; the adapters only decode, call these functions, and send.
"""
