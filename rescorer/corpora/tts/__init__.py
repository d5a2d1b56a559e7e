"""Text-to-speech engines that return audio with exact word times, behind one interface."""

from rescorer.corpora.tts.base import Prosody, SynthesisError, Synthesized, TTSEngine, WordTime

__all__ = ["Prosody", "SynthesisError", "Synthesized", "TTSEngine", "WordTime", "get_engine", "ENGINES"]

ENGINES = ("espeak", "flite", "festival")


def get_engine(name: str) -> TTSEngine:
    """An engine by name; imported lazily so a missing engine fails only when used."""
    if name == "espeak":
        from rescorer.corpora.tts.espeak import EspeakEngine

        return EspeakEngine()
    if name == "flite":
        from rescorer.corpora.tts.flite import FliteEngine

        return FliteEngine()
    if name == "festival":
        from rescorer.corpora.tts.festival import FestivalEngine

        return FestivalEngine()
    raise ValueError(f"unknown TTS engine {name!r}; known: {', '.join(ENGINES)}")
