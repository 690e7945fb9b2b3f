"""Stage 1: one node, the in-memory core, the chat in a browser (`mix phx.server`)."""
