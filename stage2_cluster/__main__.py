"""`python -m stage2_cluster`: one named node of a Redis-backed cluster."""

from __future__ import annotations

import os

from shared.server import main
from stage2_cluster.node import ClusterNode

if __name__ == "__main__":
    main(ClusterNode, dict(os.environ), node_name="a@localhost")
