"""Tests of the emulated sharded cluster (python -m mongoemu cluster): separate shard, config
and router processes, chunk migrations, merged change streams, and pymongosync migrations from
and to such clusters."""
