"""Cluster engines: several Stratus processes (nodes) serving the same rooms.

`server.backplane` defines the seam (`Cluster`, `Backplane`, `MessageBus`) and the one-process
default. `redis_link.RedisCluster` is the Redis engine (`[cluster] backend = "redis"`): the
link (connections, heartbeat, outage and resync), the message bus for protocols, and, in
`redis_rooms`, the backplane that keeps room values in Redis. `migrate` copies a single-node
store into Redis.
"""
