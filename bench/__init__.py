"""Benchmarks: ChatLab against two peers under one load generator (`make bench`).

- `loadgen`: bare WebSocket clients speaking Phoenix V2, Engine.IO 4 / Socket.IO and the
  Channels peer's JSON frames;
- `systems`: Redis plus two server processes of any system, started and ended by PID;
- `peer_socketio`, `peer_channels`: the peer servers (python-socketio + AsyncRedisManager,
  Django Channels + channels_redis, both on uvicorn);
- `workloads`: W1-W5 and their sizes;
- `runner`: `python -m bench`, every workload on fresh clusters of every system, in turn;
- `report`: the table, the machine, the smoke checks; `bench/results/<date>.json`;
- `plot`: the PNG used by docs/benchmarks.md.
"""
