"""What operators see and control: metrics (and, later, the admin API and dashboard).

This package sits above the core and the protocols: it may import `server` and `protocols`,
neither of which imports it. The composition root (`server.__main__`) wires it in.
"""
