"""Server plugins for the scratchcommunication and scratchattach sprites (docs/sprites.md).

Plugins (configured as `[[plugins]]` in config.toml):
``scratchcommunication.CloudSockets`` / ``scratchcommunication.CloudRequests`` and
``scratchattach_plugin.ScratchattachRequests``; handlers use ``request_api.request``.

The protocol cores (digits, cipher, keys, pacing, cloud_socket, requests_grammar,
scratchattach) are pure and I/O-free, see docs/specs/cloud-sockets.md: nothing there touches
sockets, clocks or files, and the current time is always passed in as ``now`` (float seconds
since the Unix epoch), so a plugin (or a test) drives every state machine explicitly.
``runtime`` holds the I/O side shared by the plugins (paced writers, settings, key files).
"""
