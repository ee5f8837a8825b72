"""The communication layer: queue descriptors, packets, stop signals, connections, routers."""

from .connection import Connection
from .local_queue import LocalQueue, QueueShutDown, QueueStats
from .packet import Bundle, Packet, StopSignal
from .partition import partition, stable_hash
from .queue_descriptor import BaseQueueDescriptor, PythonQueueDescriptor
from .ray_queue import RayQueueDescriptor
from .router import BaseRouter, BroadcastGroup, RoutingDecision
from .rpc_queue import RPCQueueDescriptor, RPCQueueServer

__all__ = [
    "BaseQueueDescriptor",
    "BaseRouter",
    "BroadcastGroup",
    "Bundle",
    "Connection",
    "LocalQueue",
    "Packet",
    "PythonQueueDescriptor",
    "QueueShutDown",
    "QueueStats",
    "RPCQueueDescriptor",
    "RPCQueueServer",
    "RayQueueDescriptor",
    "RoutingDecision",
    "StopSignal",
    "partition",
    "stable_hash",
]
