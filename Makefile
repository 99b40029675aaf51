# The two commands of README: `make demo` and `make test`.
.PHONY: demo test unit dataplane e2e generate

demo:
	bash tests/demo.sh

test:
	bash tests/run.sh

unit:
	bash tests/run.sh tests/unit

dataplane:
	bash tests/run.sh tests/dataplane

e2e:
	bash tests/run.sh tests/e2e

generate:
	"$$(bash tests/bootstrap.sh)" -m shopdb_operator.api.generate
