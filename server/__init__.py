"""Stratus: a self-hosted cloud-variable server for Scratch and TurboWarp projects."""

__version__ = "0.1.0"
