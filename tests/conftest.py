"""Test set-up: eight simulated CPU devices and fast compilation for tiny models."""

import os
import sys

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

# The slow tier (`pytest -m slow`; CI runs it after the fast tier): whole jobs end to end,
# several processes, and the few single checks that take over 10 s on 2 cores. Each still runs
# in CI with every assertion; the fast tier (`-m "not slow"`) stays under 8 minutes. Test ids
# are matched by suffix of their node id (file::name[params]).
SLOW = {
    # Whole jobs end to end, in this process or as `python -m sr_jax.main` subprocesses.
    "test_colora.py::test_colora_job_runs_every_arm_and_resumes",
    "test_colora_restormer.py::test_converted_restormer_runs_the_colora_job_and_infers",
    "test_study.py::test_a_micro_study_runs_writes_its_report_and_resumes_after_an_interruption",
    "test_train.py::test_the_console_is_a_page_with_progress_titles_and_no_echoed_scalars",
    "test_train.py::test_resume_equals_uninterrupted_and_eval_mode",
    "test_train.py::test_lora_job_end_to_end",
    "test_train.py::test_prod_pretraining_writes_the_data_grid_and_a_base_that_lora_loads",
    "test_train.py::test_checkpoint_of_another_architecture_is_named",
    "test_objectives.py::test_a_toy_objective_registered_here_trains_through_the_unchanged_trainer",
    "test_resshift_job.py::test_lora_on_part_of_the_chain_end_to_end",
    "test_sr3_job.py::test_lora_on_part_of_the_chain_end_to_end",
    "test_gan.py::test_two_stage_lora_gan_run_keeps_the_base_and_resumes",
    "test_faults_train.py::test_a_truncated_latest_checkpoint_falls_back_to_the_previous_step",
    "test_faults_train.py::test_a_diverged_state_is_never_saved_and_a_sane_rerun_finishes",
    ("test_lora_branch.py::test_a_run_not_merged_keeps_no_state_for_frozen_leaves_and_exports_"
     "merged[unmerged]"),
    ("test_lora_branch.py::test_a_run_not_merged_keeps_no_state_for_frozen_leaves_and_exports_"
     "merged[factored]"),
    "test_infer.py::test_grayscale_restormer_gets_luma_and_writes_gray_pngs",
    "test_perf_report.py::test_one_row_per_model_arm_dtype",
    "test_perf_report.py::test_numbers_are_plausible",
    "test_perf_report.py::test_sr3_steps_through_the_diffusion_objective",
    "test_ema.py::test_ema_is_checkpointed_resumed_bitwise_and_exported",
    # Command lines in subprocesses (each pays the start-up of JAX and TensorFlow).
    "test_infer.py::test_cli_folder_with_adapter_and_tiles",
    "test_infer.py::test_cli_single_file_without_tiling_and_missing_checkpoint",
    "test_infer.py::test_cli_keeps_going_past_a_bad_image_and_exits_1_naming_it",
    "test_infer.py::test_cli_replaces_outputs_only_with_overwrite",
    "test_train.py::test_unknown_config_key_is_an_error_listing_valid_keys",
    "test_errors.py::test_config_value_out_of_range_exits_2_naming_the_key",
    "test_errors.py::test_mistyped_key_exits_2_naming_the_closest_key",
    "test_errors.py::test_a_held_workdir_exits_1_naming_the_holder",
    "test_errors.py::test_a_diverged_run_exits_1_naming_the_step",
    "test_errors.py::test_a_missing_checkpoint_for_inference_exits_2",
    "test_errors.py::test_missing_image_folders_exit_2_naming_the_flag",
    "test_errors.py::test_a_wrong_architecture_conversion_exits_2",
    "test_errors.py::test_an_unknown_published_table_exits_2_listing_them",
    "test_errors.py::test_traceback_flag_shows_the_stack_of_an_expected_error",
    "test_reproduce.py::test_killed_reproduction_resumes_and_gives_the_same_table",
    "test_reproduce.py::test_a_second_reproduction_is_refused_naming_the_first",
    "test_workdir_lock.py::test_without_flock_a_renewing_holder_on_another_host_is_never_taken_over",
    # Several processes or hosts.
    "test_worker_cleanup.py::test_kill_9_of_a_trainer_with_two_workers_leaves_no_child",
    "test_multiprocess.py::test_two_processes_equal_one_process_with_eight_devices",
    "test_train.py::test_one_device_equals_eight_devices",
    "test_train.py::test_fsdp_equals_replicated[-1-8]",
    "test_train.py::test_fsdp_equals_replicated[2-4]",
    "test_scaleout.py::test_fsdp_equals_replicated_for_the_gan_and_diffusion_objectives[diffusion]",
    "test_scaleout.py::test_fsdp_equals_replicated_for_the_gan_and_diffusion_objectives[gan]",
    # Large compiled programs: every layout of the biggest models, the seam checks of tiling.
    "test_lora_branch.py::test_every_model_in_every_layout_equals_merged[restormer]",
    "test_lora_branch.py::test_every_model_in_every_layout_equals_merged[sr3]",
    "test_lora_branch.py::test_every_model_in_every_layout_equals_merged[mesrgan]",
    "test_lora_branch.py::test_the_compiled_step_drops_the_weight_gradients_of_kernels_not_merged",
    "test_tlc.py::test_tiles_join_without_seams_with_tlc_and_not_without",
    "test_restormer.py::test_odd_sizes_are_reflect_padded_to_eight",
    "test_restormer.py::test_bfloat16_compute_keeps_float32_params_and_output",
    "test_gan.py::test_step_is_generator_update_then_discriminator_update_on_the_old_output",
    "test_faig.py::test_nafnet_matches_explicit_grad_loop",
    "test_resshift_objective.py::"
    "test_apply_samples_reproducibly_in_the_unit_range_and_starts_near_bicubic",
    "test_nafnet.py::test_shifted_and_xla_impls_agree_forward_and_gradient",
    "test_benchmark.py::test_forward_and_steps_report[restormer]",
    "test_resshift.py::test_with_the_sr3_unet",
    "test_adapter_bank.py::test_a_mixed_batch_equals_each_image_through_its_merged_adapter"
    "[restormer-micro-16]",
    "test_adapter_bank.py::test_the_benchmark_rows_time_both_and_check_every_mixed_row",
    "test_adapter_bank.py::test_bank_tiles_with_tlc_join_far_closer_than_without",
    "test_restormer.py::test_dual_pixel_preset_takes_two_views",
}


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Marks the SLOW tests `slow`; a SLOW entry that matches no test is an error (renamed)."""
  matched = set()
  for item in items:
    for suffix in SLOW:
      if item.nodeid.endswith(suffix):
        item.add_marker(pytest.mark.slow)
        matched.add(suffix)
  whole_suite = len({os.path.basename(str(i.fspath)) for i in items}) > 40
  if whole_suite and SLOW - matched:
    raise pytest.UsageError(f"conftest.SLOW names tests that do not exist: {SLOW - matched}")


@pytest.fixture(scope="module")
def single_threaded_torch():
  """PyTorch on one thread while a module's tests run: for the tiny reference models its
  thread pool only adds overhead (seconds per forward on a busy 2-core machine instead of
  milliseconds). Does nothing when PyTorch is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield None
    return
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch(single_threaded_torch):  # pylint: disable=redefined-outer-name
  """The single-threaded torch module, or a skip when PyTorch is not installed."""
  if single_threaded_torch is None:
    pytest.skip("PyTorch is not installed")
  return single_threaded_torch
