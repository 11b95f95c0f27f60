"""Operator surfaces: the admin API, the public read API and Scratch's history log
(docs/api.md, README "Variable history").

They act on the server only through its facade (`server.facade.Facade`) and its event bus,
are wired by the composition root (`server.__main__.build_server`), and are imported by
neither the core nor the protocols.
"""
