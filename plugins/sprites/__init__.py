"""Pure, I/O-free cores of the sprite plugins (scratchcommunication, scratchattach).

See shared/specs/cloud-sockets.md. Nothing here touches sockets, clocks or files: the current
time is always passed in as ``now`` (float seconds since the Unix epoch), so a plugin (or a test)
drives every state machine explicitly.
"""
