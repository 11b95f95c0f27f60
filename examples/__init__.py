"""Example handler modules for the sprite plugins (see docs/sprites.md)."""
