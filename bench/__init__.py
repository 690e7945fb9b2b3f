"""Benchmarks: ChatLab against python-socketio under one load generator (`make bench`).

- `loadgen`: bare WebSocket clients speaking Phoenix V2 and Engine.IO 4 / Socket.IO;
- `systems`: Redis plus two server processes of either system, started and ended by PID;
- `peer_socketio`: the peer server (python-socketio + AsyncRedisManager on uvicorn);
- `run`: the workloads W1-W4, the table, `bench/results/<date>.json`;
- `plot`: the PNG used by docs/benchmarks.md.
"""
