"""fal's wire shapes that the HTTP side and the workers both speak: the queue's status bodies and
the one mapping from an exception to how a request fails. Imports the store layer only.
"""
