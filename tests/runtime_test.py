"""Process-wide settings: the GPU GEMM flag respects what the user set."""

from dlsjax import runtime


def test_triton_gemm_flag_added_once_and_user_value_kept(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  runtime._gpu_gemm_flag()
  runtime._gpu_gemm_flag()
  flags = runtime.os.environ["XLA_FLAGS"].split()
  assert flags == ["--xla_force_host_platform_device_count=4", runtime.TRITON_GEMM_FLAG]

  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
  runtime._gpu_gemm_flag()
  assert runtime.os.environ["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true"

  monkeypatch.delenv("XLA_FLAGS")
  runtime._gpu_gemm_flag()
  assert runtime.os.environ["XLA_FLAGS"] == runtime.TRITON_GEMM_FLAG
