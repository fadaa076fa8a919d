# The README's two commands, plus the read-only checks. Each target calls a script in
# scripts/, so CI (.ci/run) and people run exactly the same thing.

.PHONY: demo test verify fmt

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
