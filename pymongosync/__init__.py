"""pymongosync: an open-source reimplementation of MongoDB's mongosync (Cluster-to-Cluster Sync)."""
