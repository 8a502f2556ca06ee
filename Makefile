# The two commands a newcomer runs: `make run` and `make test`.
# Both run the idempotent set-up first, so they work on a fresh machine.

.PHONY: setup run test bench lint

setup:
	@bash scripts/setup.sh

# The embedded default: directory + volume server, data under ./data.
# Built as `make test` builds (test builds unify dependency features with
# the dev-dependencies, a plain `cargo run -p hayloft` does not): whichever
# command runs second reuses the first one's build.
run: setup
	cargo test --workspace --no-run --quiet
	./target/debug/hayloft server

# nextest (installed with the toolchain here) runs each test in its own
# process and ends with one summary line; plain cargo test is the fallback.
test: setup
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	cargo bench -p hayloft-benches
	cargo run --release -p hayloft-benches --bin index-memory
