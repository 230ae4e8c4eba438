"""audiod: a real-time audio capture daemon that transcribes speech locally with Whisper."""

__version__ = "0.1.0"
