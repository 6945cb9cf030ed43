"""A sharded cluster made of emulator processes.

``python -m mongoemu cluster --shards N`` (:mod:`mongoemu.cluster.launcher`) starts a config
server and N shards, each the ordinary replica-set emulator (shards run with ``--shardsvr``,
see :mod:`mongoemu.cluster.shard`), and a router (:mod:`mongoemu.cluster.router`) that clients
reach as a mongos. The router keeps no state of its own that a restart would lose: chunks,
databases and settings live in the config server's ``config`` database.
"""
