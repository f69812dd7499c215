// Which device a rank runs on (choose_rank_device, mesh_options_for in runtime/mesh.cpp): the pure
// choice for every flag and machine, this machine's answer, and the CLI's one-line refusals. What
// needs a GPU to run (NCCL groups, CUDA tensors staged for CPU scalars) is compiled by
// `make cuda-build` and run by scripts/gpu_check.sh.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <functional>

#include <torch/cuda.h>

#include "autotp/error.h"
#include "autotp/mesh.h"
#include "fixtures.h"

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const autotp::Error& e) {
    return e.what();
  }
  return "";
}

// What "--device cuda" says where CUDA is not usable: this build has none, or this process has no driver or GPU.
std::string no_cuda() {
  return autotp::cuda_build() ? "--device cuda: CUDA is not usable in this process (no driver or no GPU); use --device cpu"
                              : "--device cuda: this autotp is built against a CPU LibTorch (make cuda-build builds one against "
                                "CUDA); use --device cpu";
}

TEST(Device, ChoiceForEveryFlagAndMachine) {
  using autotp::choose_rank_device;
  const c10::Device cpu(c10::DeviceType::CPU);
  // auto: a GPU per local rank when CUDA is there, else the CPU
  EXPECT_EQ(choose_rank_device("auto", false, 0, 0), cpu);
  EXPECT_EQ(choose_rank_device("auto", true, 0, 3), cpu);  // a CUDA LibTorch on a machine without GPUs
  EXPECT_EQ(choose_rank_device("auto", true, 8, 0), c10::Device(c10::DeviceType::CUDA, 0));
  EXPECT_EQ(choose_rank_device("auto", true, 8, 7), c10::Device(c10::DeviceType::CUDA, 7));
  EXPECT_EQ(choose_rank_device("cpu", true, 8, 5), cpu);
  EXPECT_EQ(choose_rank_device("cuda", true, 2, 1), c10::Device(c10::DeviceType::CUDA, 1));
  EXPECT_EQ(error_of([&] { choose_rank_device("cuda", false, 0, 0); }), no_cuda());
  EXPECT_EQ(error_of([&] { choose_rank_device("cuda", true, 0, 0); }),
            "--device cuda: no GPU is visible to this process (CUDA_VISIBLE_DEVICES?); use --device cpu");
  EXPECT_EQ(error_of([&] { choose_rank_device("cuda", true, 2, 2); }),
            "--device cuda: LOCAL_RANK 2 but 2 GPUs are visible; one rank per GPU: --nproc_per_node 2 at most");
  EXPECT_EQ(error_of([&] { choose_rank_device("auto", true, 1, 1); }),
            "--device cuda: LOCAL_RANK 1 but 1 GPU is visible; one rank per GPU: --nproc_per_node 1 at most");
  EXPECT_EQ(error_of([&] { choose_rank_device("gpu", true, 1, 0); }),
            "--device gpu: expected cpu, cuda or auto (cuda when a GPU is visible, else cpu)");
}

TEST(Device, ThisMachine) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU machine: scripts/gpu_check.sh covers it";
  const autotp::MeshOptions o = autotp::mesh_options_for("auto", 2);
  EXPECT_EQ(o.tp, 2);
  EXPECT_EQ(o.device, c10::DeviceType::CPU);
  EXPECT_EQ(o.device_index, -1);
  EXPECT_EQ(error_of([] { autotp::mesh_options_for("cuda", 1); }), no_cuda());
}

TEST(Device, CliRefusesInOneLine) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU machine";
  const std::string model = autotp_test::fixture("llama_gqa");
  const std::string config = testing::TempDir() + "device_test.json";
  std::ofstream(config) << R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 1}})";
  auto r = autotp_test::run_command(std::string(AUTOTP_CLI) + " train --config " + config + " --model " + model +
                                    " --data x.tokens --device cuda");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "autotp: error: " + no_cuda() + "\n");
  r = autotp_test::run_command(std::string(AUTOTP_CLI) + " verify " + model + " --tp 2 --device tpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "autotp: error: --device tpu: expected cpu, cuda or auto (cuda when a GPU is visible, else cpu)\n");
  std::remove(config.c_str());
}

}  // namespace
