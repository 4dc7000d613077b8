# confguard — two commands matter: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-real test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m confguard.demo

# The same demo against a real FreeSWITCH ($$CONFGUARD_FREESWITCH, else ../shared/freeswitch/dist).
demo-real: $(STAMP)
	$(BIN)/python -m confguard.demo --real

# Two workers: the real-switch (realfs) tests, which mostly wait on FreeSWITCH's clock, run on
# one of them while the other takes the simulator's tests.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# Performance figures, not tests (bench/README.md): the daemon against the simulator, and against
# a real FreeSWITCH when one is found; one table, bench/results/<timestamp>.json and .png (~4 min).
# matplotlib (the `bench` extra) only draws the plot: without it the run says so and goes on.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' || echo "bench: matplotlib not installed, no plot"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check confguard tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- system install (as root): `sudo make install`, then edit /etc/confguard/confguard.toml,
# put the ESL password in /etc/confguard/esl-password and `systemctl enable --now confguard`.
OPT_DIR  := /opt/confguard
ETC_DIR  := /etc/confguard
UNIT_DIR := /etc/systemd/system

.PHONY: install uninstall

install:
	@test "$$(id -u)" = 0 || { echo "make install: run as root (sudo make install)" >&2; exit 1; }
	getent group confguard >/dev/null || groupadd --system confguard
	getent passwd confguard >/dev/null || useradd --system --gid confguard \
	    --home-dir /var/lib/confguard --no-create-home --shell /usr/sbin/nologin \
	    --comment "confguard service" confguard
	test -x $(OPT_DIR)/bin/python || $(PYTHON) -m venv $(OPT_DIR)
	$(OPT_DIR)/bin/python -m pip install --quiet --upgrade pip
	$(OPT_DIR)/bin/python -m pip install --quiet --no-cache-dir .
	install -D -m 0644 README.md $(OPT_DIR)/share/doc/README.md
	rm -rf $(OPT_DIR)/share/doc/deploy && cp -r deploy $(OPT_DIR)/share/doc/deploy
	install -D -m 0644 deploy/confguard.service $(UNIT_DIR)/confguard.service
	install -d -m 0750 -o root -g confguard $(ETC_DIR)
	test -e $(ETC_DIR)/confguard.toml || \
	    install -m 0640 -o root -g confguard deploy/confguard.toml $(ETC_DIR)/confguard.toml
	@test -e $(ETC_DIR)/esl-password || { \
	    printf 'ClueCon\n' | install -m 0600 -o root -g root /dev/stdin $(ETC_DIR)/esl-password; \
	    echo "NOTE: $(ETC_DIR)/esl-password holds FreeSWITCH's default 'ClueCon': replace it."; }
	! test -d /etc/logrotate.d || test -e /etc/logrotate.d/confguard || \
	    install -m 0644 deploy/logrotate.conf /etc/logrotate.d/confguard
	! test -d /run/systemd/system || systemctl daemon-reload
	@echo "installed. Next: edit $(ETC_DIR)/confguard.toml and $(ETC_DIR)/esl-password, then"
	@echo "  systemctl enable --now confguard && confguard check && journalctl -u confguard -f"

# Keeps /etc/confguard and the journal in /var/lib/confguard; `make uninstall PURGE=1` removes
# them and the confguard user as well.
uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall: run as root" >&2; exit 1; }
	! test -d /run/systemd/system || systemctl disable --now confguard.service 2>/dev/null || true
	rm -f $(UNIT_DIR)/confguard.service /etc/logrotate.d/confguard
	rm -rf $(UNIT_DIR)/confguard.service.d $(OPT_DIR)
	! test -d /run/systemd/system || systemctl daemon-reload
	test -z "$(PURGE)" || rm -rf $(ETC_DIR) /var/lib/confguard /var/log/confguard
	test -z "$(PURGE)" || ! getent passwd confguard >/dev/null || userdel confguard
	test -z "$(PURGE)" || ! getent group confguard >/dev/null || groupdel confguard
