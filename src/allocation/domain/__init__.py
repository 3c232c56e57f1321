"""The pure domain: inventory rules, commands and events. Standard library only."""
