"""The per-partition actors and their supervisors, and the node's application tree.

One Raft partition (a table x partition pair) is a ``one_for_all`` supervisor (``part_sup``)
over its queue, storage, log, server, acceptor and transport cleanup processes; ``sup`` holds an
application's partitions; ``app`` starts the node-wide services. The modules users import are
the top-level faces (``waraft.server``, ``waraft.acceptor``, ``waraft.sup``, ...).
"""
