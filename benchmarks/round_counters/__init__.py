"""Counting what a Raft round costs in a harness run (see ``sitecustomize``)."""
