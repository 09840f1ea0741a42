"""Streams with offsets and epochs, and where they are kept.

The streams a route or a room glob keeps, replay and resume, and the store
interface with its memory, SQLite and Redis Streams stores. May import
``server``, ``core`` and ``protocol``; not ``cluster`` (its sibling) nor
anything above.
"""
