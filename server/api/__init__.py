"""The HTTP side of a node: fal's routes, uploads, the playground's routes, auth, the request guard,
the routes' dependencies, connection deadlines, TLS and the node's secrets. Imports the runtime, fal, store and
files layers, never the reverse.
"""
