"""What runs jobs and keeps the queue on every node: the workers (threads or processes of their
own), queue upkeep, webhook delivery, retention and metrics. Imports the fal, store and files layers.
"""
