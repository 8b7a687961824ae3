"""The paper's SVM-on-MFCC baseline, after Piczak (ESC-50, 2015): per clip, the mean and standard
deviation over frames of MFCCs 1-20 (the 0th, loudness, left out) and of the zero-crossing
rate, computed with librosa on the clip as it is (no tiling). Piczak kept 12 MFCCs; 20 is the
careful version (ESC-10 with eval.run's SVM: 0.725 against 0.695; the paper has 0.675)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.audio import librosa_errors, load_audio
from schemas import SAMPLE_RATE

N_MFCC = 20
N_FFT = 2048  # ~93 ms frames at 22050 Hz
HOP = 512


def mfcc_features(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One clip -> a vector of 2 * (20 + 1) statistics."""
    import librosa  # slow to import; only this baseline needs it

    mfcc = librosa.feature.mfcc(
        y=wave, sr=sample_rate, n_mfcc=N_MFCC + 1, n_fft=N_FFT, hop_length=HOP
    )[1:]
    zcr = librosa.feature.zero_crossing_rate(wave, frame_length=N_FFT, hop_length=HOP)
    frames = np.concatenate([mfcc, zcr])
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]).astype(np.float32)


def extract_mfcc(paths: Sequence[Path], progress: bool = True) -> list[np.ndarray]:
    vectors = []
    for path in tqdm(paths, desc="mfcc", unit="clip", disable=not progress):
        wave = load_audio(path)
        with librosa_errors(path):
            vectors.append(mfcc_features(wave))
    return vectors
