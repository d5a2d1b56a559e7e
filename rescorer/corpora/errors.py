"""Errors about corpus input: each message names the file and the utterance."""


class CorpusError(ValueError):
    """Bad corpus input (missing or unreadable audio, transcript problems, alignment mismatch)."""
