"""Tests of the mongosync process, run as a user runs it: the console script as a subprocess,
its HTTP API, its logs and signals."""
