# The README's first command: everything a fresh machine needs, then the product running on
# testenv (see scripts/demo.sh).
run:
	scripts/demo.sh

demo: run

# The README's second command.
test:
	scripts/test

.PHONY: run demo test
