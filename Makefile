# The README's two commands, plus the read-only checks. Each target calls a script in
# scripts/, so CI (.ci/run) and people run exactly the same thing.

.PHONY: demo test verify fmt soak bench instructions

SEEDS ?= 10000

## Build and run the local demo stack that tells the seed's story.
demo:
	scripts/demo

## Install what is missing, build, run every test, check format and lints.
test:
	scripts/test

## Read-only checks without installing anything.
verify:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

fmt:
	cargo fmt --all

## Measure the performance figures (release build) next to this machine's floors: each
## figure is the median of ROUNDS rounds, printed with its spread.
ROUNDS ?= 3
bench:
	cargo build --release --workspace --bins
	$${CARGO_TARGET_DIR:-target}/release/lockstep-bench --rounds $(ROUNDS) --json bench-results.json

## User-space instructions per release, counted by callgrind (needs valgrind): a figure
## for A/B runs of small changes that the VM's noise does not move.
instructions:
	cargo build --release -p lockstep-bench --bin lockstep-bench
	scripts/instructions

## Run many fault-schedule seeds (release build); prints seeds, violations, wall time.
soak:
	cargo run --release -p lockstep-sim --bin lockstep-soak -- --seeds $(SEEDS)
