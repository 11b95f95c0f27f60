"""Operator surfaces: HTTP endpoints and pages for the people who run a Stratus server.

They act on the server through its facade (`server.facade.Facade`), are wired by the
composition root (`server.__main__.build_server`), and are imported by neither the core nor
the protocols.
"""
