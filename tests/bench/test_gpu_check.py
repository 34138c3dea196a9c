"""bench/gpu_check.py without a GPU: the refusal, the FLOP and MFU arithmetic, the parity check's verdicts at tiny
sizes, and the whole check run end to end on the CPU (--cpu-smoke), writing a record of its JSON schema."""

from __future__ import annotations

import contextlib
import io
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import gpu_check
from bench.gpu_check import (
    AttentionShape,
    GpuCheck,
    attention_parity,
    causal_attention_flops,
    matmul_parameters,
    mfu,
    model_flops_per_token,
    peak_bf16_flops,
    reference_attention,
    sdpa_flash,
)
from oracle.moe850b.config import load_config
from oracle.moe850b.params import count_parameters
from tests.conftest import micro_config

CPU = torch.device("cpu")
TINY = AttentionShape(batch=1, positions=64, heads=4, kv_heads=2, head_dim=16)
PARTS = {"moe_layer", "attention", "train"}


def run_main(args: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = gpu_check.main(args)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, GpuCheck]:
    out = tmp_path_factory.mktemp("gpu_check") / "nested" / "record.json"
    code, stdout, _ = run_main(["--cpu-smoke", "--out", str(out)])
    return code, stdout, GpuCheck.model_validate_json(out.read_text(encoding="utf-8"))


def test_refuses_without_cuda_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, stdout, stderr = run_main(["--out", str(tmp_path / "record.json")])
    assert code == 2
    assert stdout == ""
    assert len(stderr.splitlines()) == 1
    assert "no CUDA device" in stderr
    assert "--cpu-smoke" in stderr
    assert not (tmp_path / "record.json").exists()


def test_out_defaults_to_the_out_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.default_out() == tmp_path / "gpu_check.json"
    monkeypatch.delenv("OUT")
    assert gpu_check.default_out() == Path("gpu_check.json")


def test_cpu_smoke_runs_every_part_and_writes_the_record(smoke: tuple[int, str, GpuCheck]) -> None:
    code, stdout, record = smoke
    assert code == 0
    assert record.mode == "cpu-smoke"
    assert record.passed
    assert record.errors == {}
    assert set(record.part_seconds) == PARTS
    assert record.environment.device == "cpu"
    assert record.environment.torch == torch.__version__
    assert record.environment.peak_bf16_tflops is None
    lines = stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["gpu_check", "moe_layer", "attention", "train", "gpu_check"]
    assert lines[-1].startswith("gpu_check: passed")


def test_moe_layer_flops_are_those_of_the_layer_bench(smoke: tuple[int, str, GpuCheck]) -> None:
    layer = smoke[2].moe_layer
    assert layer is not None
    assert set(layer.tflops) == {"grouped", "loop"}  # the dense chain runs on CUDA only
    assert layer.flops_per_step == 18 * layer.tokens * layer.top_k * layer.hidden * layer.expert_ffn
    for key, rate in layer.tflops.items():
        assert rate * 1e12 * layer.seconds_median[key] == pytest.approx(layer.flops_per_step, rel=1e-9)
    assert layer.grouped_path_ran  # torch._grouped_mm runs on CPU in fp32


def test_smoke_steps_train_the_mini_recipe(smoke: tuple[int, str, GpuCheck]) -> None:
    train = smoke[2].train
    assert train is not None
    recipe = gpu_check.load_train_config("oracle-mini")
    assert (train.recipe, train.micro_batch, train.gradient_accumulation) == ("oracle-mini", 2, 2)
    assert train.tokens_per_step == 2 * 2 * (recipe.data.seq_len - 1)
    assert len(train.losses) == train.warmup_steps + len(train.seconds_per_step)
    assert train.losses[0] == pytest.approx(math.log(4096), abs=0.5)  # random tokens, a fresh model
    assert train.tokens_per_s == pytest.approx(train.tokens_per_step / statistics.median(train.seconds_per_step))
    assert train.mfu is None
    assert train.peak_memory_gib is None


def test_a_failing_part_is_recorded_and_fails_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken_layer(device: torch.device, smoke: bool) -> None:
        raise ValueError("grouped GEMM exploded")

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu_check, "check_moe_layer", broken_layer)
    monkeypatch.setattr(gpu_check, "check_training", out_of_memory)
    code, stdout, _ = run_main(["--cpu-smoke", "--out", str(tmp_path / "record.json")])
    record = GpuCheck.model_validate_json((tmp_path / "record.json").read_text(encoding="utf-8"))
    assert code == 1
    assert not record.passed
    assert set(record.errors) == {"moe_layer", "train"}
    assert record.errors["moe_layer"] == "ValueError: grouped GEMM exploded"
    assert record.moe_layer is None
    assert record.train is None
    assert record.attention is not None  # the part between them still ran
    assert record.attention.passed
    assert "moe_layer: FAILED (ValueError: grouped GEMM exploded)" in stdout
    assert "train: FAILED (OutOfMemoryError: CUDA out of memory.)" in stdout


def test_model_flops_per_token_of_the_bench_preset() -> None:
    bench = load_config("oracle-bench")
    # 142,099,456 active parameters less the 32,768 x 1,024 embedding table, then 12 · 8 layers · 16 heads · 64 · 2047
    assert matmul_parameters(bench) == 142_099_456 - 32_768 * 1_024
    assert model_flops_per_token(bench, 2047) == 6 * 108_545_024 + 201_228_288


def test_a_tied_embedding_counts_as_the_lm_head() -> None:
    tied, untied = micro_config(tie_embeddings=True), micro_config()
    assert matmul_parameters(tied) == count_parameters(tied).active
    assert matmul_parameters(untied) == count_parameters(untied).active - untied.vocab_size * untied.hidden_size


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_is_read_from_the_device_name(device_name: str, peak: float | None) -> None:
    assert peak_bf16_flops(device_name) == peak


def test_mfu_is_model_flops_over_the_peak() -> None:
    assert mfu(1_000_000_000, 98_900.0, 989e12) == pytest.approx(0.1)
    assert mfu(1_000_000_000, 98_900.0, None) is None


def test_causal_attention_flops_follow_flash_attention_s_count() -> None:
    # forward: QKᵀ and AV at 2·S²·Hd each, halved by the mask = 2·B·H·S²·Hd; backward 2.5x that
    shape = AttentionShape(batch=2, positions=4, heads=3, kv_heads=1, head_dim=8)
    assert causal_attention_flops(shape) == 2 * 3 * 2 * 16 * 8 * 7 // 2


def test_reference_attention_is_causal_grouped_query_attention() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(reference_attention(q, k, v), expected)


def non_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def heads_paired_wrongly(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    repeats = q.shape[1] // k.shape[1]  # head h reads kv head h % G instead of h // (H / G)
    return F.scaled_dot_product_attention(q, k.repeat(1, repeats, 1, 1), v.repeat(1, repeats, 1, 1), is_causal=True)


def scale_five_percent_off(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scale = 1.05 * q.shape[-1] ** -0.5
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)


def test_parity_passes_flash_sdpa_and_fails_wrong_attention() -> None:
    candidates = {
        "sdpa_flash": sdpa_flash,
        "non_causal": non_causal,
        "heads_paired_wrongly": heads_paired_wrongly,
        "scale_five_percent_off": scale_five_percent_off,
    }
    case = attention_parity("tiny", TINY, CPU, candidates)
    verdicts = {name: result.passed for name, result in case.candidates.items()}
    assert verdicts == {
        "sdpa_flash": True,
        "non_causal": False,
        "heads_paired_wrongly": False,
        "scale_five_percent_off": False,
    }
    assert set(case.bf16_reference_err) == {"out", "dq", "dk", "dv"}


def test_a_candidate_that_cannot_run_is_recorded_as_failed() -> None:
    def refused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("No available kernel. Aborting execution.\nmore detail")

    result = attention_parity("tiny", TINY, CPU, {"refused": refused}).candidates["refused"]
    assert not result.passed
    assert result.max_abs_err is None
    assert result.error == "No available kernel. Aborting execution."


def test_a_refused_flash_backend_fails_parity_and_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setitem(gpu_check.CANDIDATES, "sdpa_flash", refused)
    result, summary = gpu_check.check_attention(CPU, True, gpu_check.load_train_config("oracle-mini"))
    assert not result.passed
    assert result.timing is None
    assert result.cases[0].candidates["model"].passed
    assert "parity FAIL" in summary
    assert "flash SDPA not timed" in summary
