.PHONY: setup serve test lint bench
setup:
	scripts/setup.sh all
serve:
	scripts/serve.sh
test:
	scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy service training tests bench deploy
