"""The file store: how files and uploads are named and served, in a directory or an S3 bucket.
Imports no other layer of the server.
"""
