"""Exit codes. Distinct per cause, so systemd (RestartPreventExitStatus=) and scripts can tell them apart."""

OK = 0
FAILURE = 1  # an unexpected runtime error (the log says which)
USAGE = 2  # bad command line (argparse's own code)
NOT_RUNNING = 3  # `status`/`stop`: no daemon (LSB's "program is not running")
STATUS_UNKNOWN = 4  # `status`: a status file we cannot read as a live daemon's (LSB's "unknown")
MODEL_FAILED = 66  # EX_NOINPUT: the model is missing or failed to load
NO_DEVICE = 69  # EX_UNAVAILABLE: no usable audio input device, or the stream died
NO_PORTAUDIO = 72  # EX_OSFILE: the PortAudio library (libportaudio2) is not installed
CANT_CREATE = 73  # EX_CANTCREAT: the transcript file or runtime directory cannot be created
ALREADY_RUNNING = 75  # EX_TEMPFAIL: another audiod holds this runtime directory's pid file lock
CONFIG = 78  # EX_CONFIG: invalid configuration (the unit must not restart on it)
