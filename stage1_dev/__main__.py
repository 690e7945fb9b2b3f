"""`python -m stage1_dev`: one chat node on http://localhost:4000 with the in-memory core."""

from __future__ import annotations

import os

from shared.node import ChatNode
from shared.server import main

if __name__ == "__main__":
    main(ChatNode, dict(os.environ), node_name="nonode@nohost")
