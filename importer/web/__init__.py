"""The web service: ``voicelink-import serve``, durable import jobs and a JSON API, locked down.

``engine`` is the one door into the import engine; ``jobs`` keeps the jobs on disk and queues
sends per key; ``security`` checks Host, token and Origin; ``app`` is the API; ``server`` runs it.
"""

from importer.web.server import ServeSettings, running_server, serve

__all__ = ["ServeSettings", "running_server", "serve"]
