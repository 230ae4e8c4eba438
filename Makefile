# audiod: two commands for a newcomer on Debian/Ubuntu.
#   make run    set up, then capture from the default microphone and transcribe (Ctrl-C stops)
#   make demo   set up, then speak sample sentences into a private virtual microphone and transcribe them
#   make test   set up, then run the whole test suite (what .ci/run does)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Runtime: PortAudio. Demo and tests: a private PulseAudio server, ALSA's pulse plugin, flite and sox.
# Service tests: systemd-nspawn (systemd-container). `audiod top` tests: tmux.
RUN_PKGS  := libportaudio2
DEMO_PKGS := $(RUN_PKGS) pulseaudio pulseaudio-utils libasound2-plugins flite sox
TEST_PKGS := $(DEMO_PKGS) systemd systemd-container tmux

.PHONY: run demo bench test check setup-run setup-demo setup-test clean

define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

$(BIN)/audiod: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup-run:
	$(call apt_install,$(RUN_PKGS))
setup-demo:
	$(call apt_install,$(DEMO_PKGS))
setup-test:
	$(call apt_install,$(TEST_PKGS))

run: setup-run $(BIN)/audiod
	$(BIN)/audiod run $(ARGS)

demo: setup-demo $(BIN)/audiod
	$(BIN)/audiod demo

# Benchmark (bench/README.md): latency, WER, CPU, memory vs offline Whisper; ARGS="--quick" for one pass.
bench: setup-demo $(BIN)/audiod
	$(BIN)/python -m bench $(ARGS)

check: $(BIN)/audiod
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy

test: setup-test $(BIN)/audiod check
	$(BIN)/pytest -v --durations=15

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
