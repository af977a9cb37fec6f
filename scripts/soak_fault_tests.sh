#!/usr/bin/env bash
# Run the fault-injecting tests ROUNDS times in a row under CPU load; stop at the first failure.
# Usage: scripts/soak_fault_tests.sh [ROUNDS] [pytest args...]   (ROUNDS defaults to 10)
# The load is two busy-looping Python processes at normal priority (what `stress --cpu 2` does),
# killed on exit. PYTHON picks the interpreter (default .venv/bin/python); each round prints its
# wall time and pass/fail, and the pytest log of a failed round is kept and named (a crash, even
# one after every test passed, is a failed round, with every thread's stack in that log).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
shift || true
PYTHON=${PYTHON:-.venv/bin/python}

# The tests that inject a fault (a killed process, a storage outage, a damaged part, a full or
# read-only disk, a held lease, hostile inputs and settings), not whole files.
TESTS=(
  tests/test_lease.py
  tests/test_integrity.py
  tests/test_disk_faults.py
  tests/test_credentials.py
  tests/test_executor_node_loss.py
  tests/test_inputs.py::test_read_retries_transient_errors_with_backoff
  tests/test_inputs.py::test_s3_read_survives_server_restart
  tests/test_runtime_ray.py::test_killed_worker_is_replaced_and_output_matches
  tests/test_runtime_ray.py::test_a_stopped_worker_is_declared_lost_killed_and_replaced
  tests/test_liveness.py
  tests/test_runtime_ray.py::test_shard_failing_every_attempt_is_recorded_then_retried_by_a_rerun
  tests/test_runtime_ray.py::test_killed_driver_resumes_with_only_the_remaining_shards
  tests/test_runtime_ray.py::test_storage_outage_mid_run_costs_time_not_data
  tests/test_runtime_ray.py::test_bad_input_corpus_every_image_accounted_for
  tests/test_runtime_ray.py::test_workers_that_cannot_load_the_model_end_the_run_clearly
  tests/test_memory_bounds.py::test_a_large_image_is_downscaled_while_decoding_to_the_bound
  tests/test_memory_bounds.py::test_an_ico_decompression_bomb_named_png_is_too_many_pixels
  tests/test_memory_bounds.py::test_labels_of_a_downscaled_image_are_reported_at_its_stored_size
  tests/test_memory_bounds.py::test_decoding_wide_inputs_stays_within_the_stated_memory_bound
  tests/test_decode.py::test_a_jpeg_header_claiming_more_than_its_data_fill_is_truncated
  tests/test_input_policy.py::test_a_symlink_out_of_the_input_folder_is_outside_it
  tests/test_input_policy.py::test_refused_manifest_entries_are_failed_images_never_read
  tests/test_malformed_sets.py::test_slime_info_refuses_a_malformed_set_in_one_line
  tests/test_malformed_sets.py::test_run_refuses_a_malformed_set_before_anything_is_written
  tests/test_checkpoint_headers.py
  tests/test_capture_log.py
  tests/test_export_long_names.py
  tests/test_diffews_checkpoint_storage.py
  tests/test_input_identity.py::test_an_input_replaced_between_plan_and_read_is_recorded_and_relabeled_once_restored
  tests/test_model_fingerprint.py::test_a_model_folder_rewritten_in_place_is_refused_on_resume
)

LOAD_PIDS=()
PYTEST_PID=
LOG=$(mktemp -t soak-fault-tests.XXXXXX)
stop() {
  [ -z "$PYTEST_PID" ] || kill -INT "$PYTEST_PID" 2>/dev/null || true
  for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
  "$PYTHON" -c 'while True: pass' &
  LOAD_PIDS+=("$!")
done

count=$("$PYTHON" -m pytest --collect-only -q -p no:cacheprovider "${TESTS[@]}" "$@" |
        grep -c '::' || true)
echo "soak: $count fault tests, $ROUNDS rounds, load: ${#LOAD_PIDS[@]} busy processes"
times=()
for round in $(seq 1 "$ROUNDS"); do
  start=$(date +%s.%N)
  # faulthandler stays on through interpreter shutdown, so a crash after the session prints stacks
  PYTHONFAULTHANDLER=1 "$PYTHON" -m pytest -x -q -p no:cacheprovider "${TESTS[@]}" "$@" >"$LOG" 2>&1 &
  PYTEST_PID=$!
  if wait "$PYTEST_PID"; then result=pass; else result=FAIL; fi
  PYTEST_PID=
  seconds=$("$PYTHON" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" \
            "$start" "$(date +%s.%N)")
  times+=("$seconds")
  echo "round $round/$ROUNDS: $result in ${seconds} s ($(tail -n 1 "$LOG"))"
  if [ "$result" = FAIL ]; then
    tail -n 60 "$LOG"
    echo "soak: round $round failed after $((round - 1)) passing rounds; log: $LOG"
    exit 1
  fi
done
rm -f "$LOG"
echo "soak: $ROUNDS of $ROUNDS rounds passed; seconds per round: ${times[*]}"
