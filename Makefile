# The two commands of README: `make demo` and `make test`.
.PHONY: demo test unit dataplane e2e bench bench-backup generate

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

bench:
	"$$(bash tests/bootstrap.sh)" tests/bench/failover.py --runs 5

bench-backup:
	"$$(bash tests/bootstrap.sh)" tests/bench/backup.py --size-gb 2 --process-max 1,2

generate:
	"$$(bash tests/bootstrap.sh)" -m shopdb_operator.api.generate
