"""Operator surfaces: the admin API and the public read API (docs/api.md).

They act on the server only through its facade (`server.facade.Facade`) and its event bus,
are wired by the composition root (`server.__main__.build_server`), and are imported by
neither the core nor the protocols.
"""
