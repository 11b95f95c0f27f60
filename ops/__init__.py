"""What operators see and control: Prometheus metrics, the admin API, the live dashboard, the
public read API and Scratch's history log (docs/api.md, README).

This package sits above the core and the protocols: it may import `server` and `protocols`,
neither of which imports it. Its components act on the server only through the facade
(`server.facade.Facade`) and the event bus, and the composition root (`server.__main__`)
wires them in.
"""
