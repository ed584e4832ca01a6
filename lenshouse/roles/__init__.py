"""The processes of cluster mode, each runnable alone (``lenshouse gateway``,
``lenshouse loader``, ``lenshouse lens-server``): gateways validate writes and
publish them to the replicated log, loaders own log partitions and load them
into the ClickHouse cluster, lens servers answer lenses from it."""
