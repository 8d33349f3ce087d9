"""Actors: long-lived tasks owned by the supervisor."""
