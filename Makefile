# The two commands of README: `make demo` and `make test`.
.PHONY: demo test unit dataplane e2e bench bench-failover-load bench-backup bench-operator-scale bench-load generate

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

# The order rush under failover: 500 writers and 100 idle clients through PgBouncer.
bench-failover-load:
	for sync in "" --sync; do for fault in container isolate; do \
	  "$$(bash tests/bootstrap.sh)" tests/bench/failover.py --runs 3 --fault $$fault --clients 500 --idle 100 $$sync || exit 1; \
	done; done

bench-backup:
	"$$(bash tests/bootstrap.sh)" tests/bench/backup.py --size-gb 2 --process-max 1,2

# The design's load (§7) on the bench profile: installs the operator, applies
# manifests/examples/cluster-bench.yaml (namespace bench), loads the data set once, runs
# every scenario, then deletes the cluster object (its volumes stay for the next run).
bench-load:
	"$$(bash tests/bootstrap.sh)" tests/bench/load.py --install-operator --apply --release

bench-operator-scale:
	"$$(bash tests/bootstrap.sh)" tests/bench/operator_scale.py --clusters 50

generate:
	"$$(bash tests/bootstrap.sh)" -m shopdb_operator.api.generate
