"""`streamer render ... --cluster ADDRESS`: the same render on a Ray cluster.

connect (joining Ray or starting it, the workers), worker (one engine per actor process, given a typed
WorkerSettings), driver (checks like a local render, then chunks or files on an ActorPool, the finished prefix
kept on a stop signal), chunks (cutting a video into chunks and joining them without re-encoding).
"""
from streamer.cluster.driver import add_cluster_options, render_on_cluster

__all__ = ["add_cluster_options", "render_on_cluster"]
