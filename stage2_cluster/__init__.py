"""Stage 2: named nodes sharing Redis, connected by hand (`Node.connect`) or by discovery."""
