# Entry points (README). Each target does all set-up first; all of them are idempotent.
#   make run    set up, build, and inspect the bundled SmolLM2-135M-Instruct at tp=3
#   make test   set up, build, and run every test
#   make bench  set up, build, and run the benchmarks (not part of the tests)
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: setup build run test bench clean

setup:
	@bash scripts/bootstrap.sh

build: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > $(BUILD).configure.log 2>&1 || (cat $(BUILD).configure.log; exit 1)
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/autotp inspect $(BUILD)/fixtures/smollm2.pt --tp 3

test: build
	cd $(BUILD) && ctest -j $(JOBS) --output-on-failure

bench: build
	@cmake --build $(BUILD) --target autotp_bench -j $(JOBS)
	$(BUILD)/autotp_bench --benchmark_report_aggregates_only=true

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
