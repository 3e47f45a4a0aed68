"""whisperd: a self-hosted Whisper speech-to-text service."""

__version__ = "0.1.0"
