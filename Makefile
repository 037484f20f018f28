demo:
	scripts/demo.sh

.PHONY: demo
