"""The owner file of a node's data directory (``node.json``): whose directory it is, and of
which cluster.

``{"name": ..., "node_id": ..., "cluster": ...}``. ``name`` and ``node_id`` are written at the
node's first start; ``cluster`` when the node first learns its cluster (``waraft bootstrap``,
or ``waraft node --cluster-id``) and never changed afterwards. The file is replaced durably
(temp file, fsync, rename) whenever it changes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Final

from waraft.distribution import nodeid

logger = logging.getLogger(__name__)

NODE_FILE: Final = "node.json"


class DataDirError(ValueError):
    """The data directory belongs to another node or cluster, or its owner file is
    unreadable or cannot be written; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Owner:
    """What a data directory's owner file records."""

    name: str
    node_id: str
    cluster: str | None = None


def read_owner(data_dir: str) -> Owner | None:
    """The recorded owner (None if the directory has no owner file); ``DataDirError`` if the
    file is unreadable or malformed."""
    path = os.path.join(data_dir, NODE_FILE)
    try:
        with open(path, "rb") as f:
            recorded = json.loads(f.read())
        name, node_id = recorded["name"], recorded["node_id"]
        cluster = recorded.get("cluster")
        if not isinstance(name, str) or not isinstance(node_id, str):
            raise ValueError("name and node_id must be strings")
        if cluster is not None:
            nodeid.check_cluster_id(cluster)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataDirError(
            f"data dir {data_dir}: {path} is unreadable ({exc}); it names the node the "
            "directory belongs to"
        ) from None
    return Owner(name, node_id, cluster)


def write_owner(data_dir: str, owner: Owner) -> None:
    """Record ``owner`` durably; ``DataDirError`` if the file cannot be written."""
    from waraft.storage.provider import write_file_durably

    path = os.path.join(data_dir, NODE_FILE)
    fields: dict[str, str] = {"name": owner.name, "node_id": owner.node_id}
    if owner.cluster is not None:
        fields["cluster"] = owner.cluster
    try:
        write_file_durably(path, json.dumps(fields).encode() + b"\n", path + ".temp")
    except OSError as exc:
        raise DataDirError(f"data dir {data_dir}: cannot write {path}: {exc}") from None


def claim(
    data_dir: str, name: str, node_id: str, cluster: str | None = None, *, write: bool = True
) -> Owner:
    """Refuse a data dir that belongs to another node or cluster; record a new (or older)
    one as this node's, of ``cluster`` if given. Returns what is recorded afterwards
    (``write=False``: what would be; nothing is written, so a start that fails after the
    check leaves the record of the node that last ran there).

    A data dir holds its node's terms, votes and log: started under another name, a node
    would answer as that node's replicas (swapped directories), and a copy of one node's
    directory given to a second node lets two nodes vote with the same vote. A new address
    for the same name is allowed (logged): Raft configs name the old id until a membership
    change replaces it."""
    owner = read_owner(data_dir)
    if owner is not None and owner.name != name:
        raise DataDirError(
            f"data dir {data_dir} belongs to node {owner.name} ({owner.node_id}), not {name}: "
            f"it holds {owner.name}'s votes and log. Start {owner.name} with it, or give "
            f"{name} its own directory"
        )
    recorded = None if owner is None else owner.cluster
    _check_same_cluster(data_dir, recorded, cluster)
    wanted = Owner(name, node_id, recorded or cluster)
    if owner == wanted or not write:
        return wanted
    if owner is not None and owner.node_id != node_id:
        logger.warning(
            "data dir %s: node %s was %s, now %s", data_dir, name, owner.node_id, node_id
        )
    write_owner(data_dir, wanted)
    return wanted


def join(data_dir: str, cluster: str) -> Owner:
    """Record that the directory's node belongs to ``cluster`` (it must have an owner file,
    see :func:`claim`); ``DataDirError`` if it belongs to another cluster."""
    nodeid.check_cluster_id(cluster)
    owner = read_owner(data_dir)
    if owner is None:
        raise DataDirError(f"data dir {data_dir} has no {NODE_FILE}: the node never claimed it")
    return claim(data_dir, owner.name, owner.node_id, cluster)


def _check_same_cluster(data_dir: str, recorded: str | None, cluster: str | None) -> None:
    if recorded is not None and cluster is not None and recorded != cluster:
        raise DataDirError(
            f"data dir {data_dir} belongs to cluster {recorded}, not {cluster}: it holds that "
            "cluster's votes and log. Start a node of that cluster with it, or give this node "
            "a new directory"
        )
