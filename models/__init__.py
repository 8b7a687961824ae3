"""The student networks, their checkpoint format and the weights they load, one job a file:

    layers.py       conv blocks (ConvSpec), the waveform convention, the paper's init
    soundnet.py     SoundNet-8 / SoundNet-5: layer tables, the model, its output step
    autoencoder.py  the paper's convolutional autoencoder baseline
    registry.py     architecture names and build_model
    checkpoint.py   our checkpoint format (weights_only-loadable, written atomically)
    weights.py      Weights: an architecture and its heads' class names; the weights cache
    sound8.py       the authors' sound8.npy: numpy-only unpickler and name mapping
    fetch.py        `python -m models.fetch`: get and convert the authors' SoundNet-8 once
    torch7.py       the authors' Torch7 .t7 release
    pretrained.py   load_pretrained: one entry point for all of the above

trainer/ and eval/ import this package; it imports no stage (only schemas/).
"""
