"""Node-wide services every layer above the runtime uses.

Configuration (``env``, WARaft's ``wa_raft_env``), the partition status table (``info``),
metrics (``metrics``), entry labels (``label``) and the msgpack codec (``codec``).
"""
