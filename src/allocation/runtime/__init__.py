"""The runtime: how a process runs its long-lived loops (supervised, started in one place)."""
