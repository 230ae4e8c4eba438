"""The speech corpus: flite sentences placed at known times in 16 kHz mono WAV files.

Each sentence is synthesised alone, trimmed to its audible part and levelled, then laid into the case's
file with silence of known length around it, so the file's reference says to the sample where each
sentence starts and ends. Everything is deterministic (fixed voices, texts and noise seeds).
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

RATE = 16000
VOICES = ("slt", "rms", "awb", "kal16")

# Harvard sentences (IEEE 1969), without numerals, so no normalisation of "four" vs "4" is needed.
CLEAN_SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
)
RAPID_SENTENCES = (
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
)

LEAD_S = 1.0  # silence before the first sentence
TAIL_S = 2.5  # after the last: longer than min_silence_ms plus one inference, so nothing waits for the stop
GAP_S = 1.2  # between sentences in the clean and noisy cases
RAPID_GAPS_S = (0.25, 0.35, 0.3, 0.4, 0.25, 0.3, 0.35)  # "rapid": brisk speech, short pauses
RAPID_STRETCH = 0.8  # flite duration_stretch: 25 % faster speech
SNR_DB = 15.0
SPEECH_RMS = 0.08  # every sentence levelled to about -22 dBFS RMS, whatever the voice's own level
FAINT_NOISE_RMS = 0.005  # about -46 dBFS: a quiet room through a cheap microphone
NOISE_S = 30.0

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    voice: str
    start_s: float  # from the start of the file
    end_s: float


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    wav: Path
    duration_s: float
    sentences: tuple[Sentence, ...]
    description: str

    @property
    def reference(self) -> str:
        return " ".join(s.text for s in self.sentences)

    @property
    def is_speech(self) -> bool:
        return bool(self.sentences)


def synthesise(text: str, voice: str, stretch: float = 1.0) -> Audio:
    """flite's rendering of ``text``, trimmed to where it is audible (-40 dB below its peak) and levelled."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", str(path)]
        subprocess.run(cmd, check=True, capture_output=True)
        audio = read_wav(path)
    loud = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
    audio = audio[loud[0] : loud[-1] + 1]
    gain = SPEECH_RMS / float(np.sqrt(np.mean(audio**2)))
    gain = min(gain, 0.9 / float(np.abs(audio).max()))  # never clip
    return (audio * gain).astype(np.float32)


def pink_noise(seconds: float, rms: float, seed: int) -> Audio:
    """1/f noise (shaped in the frequency domain) at the given RMS level."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise: Audio = np.fft.irfft(spectrum, n).astype(np.float32)
    return noise * np.float32(rms / np.sqrt(np.mean(noise**2)))


def read_wav(path: Path) -> Audio:
    with wave.open(str(path)) as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return (pcm / 32768.0).astype(np.float32)


def write_wav(path: Path, audio: Audio) -> None:
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def _lay_out(
    texts: tuple[str, ...], gaps: tuple[float, ...], stretch: float
) -> tuple[Audio, list[Sentence], list[tuple[int, int]]]:
    """Sentences in turn from each voice, separated by ``gaps``; times counted in whole samples."""
    parts: list[Audio] = [np.zeros(int(LEAD_S * RATE), dtype=np.float32)]
    sentences, spans = [], []
    pos = len(parts[0])
    for i, text in enumerate(texts):
        voice = VOICES[i % len(VOICES)]
        audio = synthesise(text, voice, stretch)
        sentences.append(Sentence(text, voice, pos / RATE, (pos + len(audio)) / RATE))
        spans.append((pos, pos + len(audio)))
        parts.append(audio)
        pos += len(audio)
        pause = gaps[i] if i < len(gaps) else TAIL_S
        parts.append(np.zeros(int(pause * RATE), dtype=np.float32))
        pos += int(pause * RATE)
    return np.concatenate(parts), sentences, spans


def build(directory: Path) -> list[Case]:
    """Make the four cases in ``directory`` (a few seconds of flite)."""
    directory.mkdir(parents=True, exist_ok=True)
    clean, sentences, spans = _lay_out(CLEAN_SENTENCES, (GAP_S,) * (len(CLEAN_SENTENCES) - 1), 1.0)
    speech_power = float(np.mean(np.concatenate([clean[a:b] for a, b in spans]) ** 2))
    noise_rms = float(np.sqrt(speech_power / 10 ** (SNR_DB / 10)))
    noisy = clean + pink_noise(len(clean) / RATE, noise_rms, seed=1)
    rapid, rapid_sentences, _ = _lay_out(RAPID_SENTENCES, RAPID_GAPS_S, RAPID_STRETCH)
    faint = pink_noise(NOISE_S, FAINT_NOISE_RMS, seed=2)

    cases = []
    for name, audio, sents, description in (
        ("noise", faint, [], f"{NOISE_S:.0f} s of faint pink noise ({FAINT_NOISE_RMS} RMS), no speech"),
        ("clean", clean, sentences, f"{len(sentences)} sentences, 4 voices, {GAP_S} s pauses"),
        ("noisy", noisy, sentences, f"the clean case with pink noise at {SNR_DB:.0f} dB SNR (speech power)"),
        (
            "rapid",
            rapid,
            rapid_sentences,
            f"{len(rapid_sentences)} sentences {1 / RAPID_STRETCH:.2f}x faster, pauses "
            f"{min(RAPID_GAPS_S)}-{max(RAPID_GAPS_S)} s",
        ),
    ):
        wav = directory / f"{name}.wav"
        write_wav(wav, audio)
        cases.append(Case(name, wav, len(audio) / RATE, tuple(sents), description))
    return cases


def describe(cases: list[Case]) -> list[dict[str, object]]:
    """The corpus as JSON: what each case holds and where each sentence sits."""
    return [
        {
            "name": c.name,
            "duration_s": round(c.duration_s, 3),
            "description": c.description,
            "sentences": [asdict(s) for s in c.sentences],
        }
        for c in cases
    ]
